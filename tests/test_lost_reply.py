"""A script whose reply is lost: redis-py sends it again, and nothing happens twice.

Between the client and a real redis-server sits a TCP proxy that, when told to, forwards the
next script call (EVALSHA) and then cuts the connection instead of passing Redis's reply on. The
script has run; the client sees a dropped connection, reconnects and sends it again (redis-py's
retry, :data:`tevo_hold.connection.RETRIES`); the script, run a second time with the same
arguments, finds its own work done. Each call still answers what the first run did, and the
stock moves once. (A call whose first run's reply was lost may answer ``replayed``, as the
one-script path does: from Redis's side it was a replay.)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tevo_hold import HoldService, RedisInventoryAdapter, Settings, build_service

from .servers import free_port, redis_server


class CuttingProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``; ``cut_next_script_reply()`` arms it to drop
    the connection that next sends EVALSHA, once Redis has answered (the reply goes nowhere)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.cuts = 0
        self._armed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_next_script_reply(self) -> None:
        self._armed.set()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            cut = threading.Event()  # this connection's script call is to lose its reply
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        while data := _recv(client):
            if b"EVALSHA" in data and self._armed.is_set():
                self._armed.clear()
                cut.set()
            server.sendall(data)
        server.close()

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        while data := _recv(server):
            if cut.is_set():  # Redis has answered the script: the client never hears it
                self.cuts += 1
                break
            client.sendall(data)
        for sock in (client, server):
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture(scope="module")
def proxy() -> Iterator[CuttingProxy]:
    with redis_server() as url:
        host, port = url.removeprefix("redis://").split("/")[0].split(":")
        cutting = CuttingProxy((host, int(port)))
        yield cutting
        cutting.close()


@pytest.fixture(params=["fused", "stepwise"])
def service(proxy: CuttingProxy, request: pytest.FixtureRequest) -> Iterator[HoldService]:
    settings = Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", api_keys=("k",))
    built = build_service(settings, fuse=request.param == "fused")
    built.ledger.client.flushdb()
    adapter = built.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    adapter.set_quantity("L", 10)
    yield built
    built.close()


def stock(service: HoldService) -> tuple[int, int, int]:
    adapter = service.adapter
    assert isinstance(adapter, RedisInventoryAdapter)
    found = adapter.stock("L")
    return found.on_hand, found.held, found.sold


def test_a_hold_whose_reply_is_lost_is_made_once(service: HoldService, proxy: CuttingProxy) -> None:
    cuts = proxy.cuts
    proxy.cut_next_script_reply()
    outcome = service.hold(remote_id="L", quantity=3, global_id="lost-1")
    assert proxy.cuts == cuts + 1  # the reply was lost, and the call answered all the same
    assert (outcome.hold.status, outcome.hold.quantity) == ("held", 3)
    assert stock(service) == (10, 3, 0)
    again = service.hold(remote_id="L", quantity=3, global_id="lost-1")  # TEvo's own retry
    assert again.replayed and again.hold.created_at == outcome.hold.created_at
    assert stock(service) == (10, 3, 0)


def test_an_invoice_whose_reply_is_lost_sells_once(
    service: HoldService, proxy: CuttingProxy
) -> None:
    service.hold(remote_id="L", quantity=2, global_id="lost-2")
    cuts = proxy.cuts
    proxy.cut_next_script_reply()
    outcome = service.invoice(global_id="lost-2", tevo_order_id=77)
    assert proxy.cuts == cuts + 1
    assert (outcome.hold.status, outcome.hold.tevo_order_id) == ("invoiced", 77)
    assert stock(service) == (8, 0, 2)
    assert service.get(global_id="lost-2").status == "invoiced"


def test_a_release_whose_reply_is_lost_gives_back_once(
    service: HoldService, proxy: CuttingProxy
) -> None:
    service.hold(remote_id="L", quantity=4, global_id="lost-3")
    service.hold(remote_id="L", quantity=1, global_id="other")
    cuts = proxy.cuts
    proxy.cut_next_script_reply()
    outcome = service.release(global_id="lost-3")
    assert proxy.cuts == cuts + 1
    assert outcome.hold.status == "released"
    assert stock(service) == (10, 1, 0)  # the other hold's ticket is still held

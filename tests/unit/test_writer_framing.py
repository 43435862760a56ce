"""The event loop's channel to the writer process frames messages exactly as multiprocessing.Connection does."""
import multiprocessing.connection
import pickle
import socket
import threading

from custody.ledger.process_writer import _frame, _unframe


def _pair():
    ours, theirs = socket.socketpair()
    return ours, multiprocessing.connection.Connection(theirs.detach())


def test_what_connection_sends_is_unframed_whole_however_it_arrives():
    ours, conn = _pair()
    messages = [[(1, ["a" * 10])], [(2, list(range(50_000)))], [(3, [])]]  # the middle one spans many reads
    received = bytearray()

    def send():
        for m in messages:
            conn.send(m)
        conn.close()

    sender = threading.Thread(target=send)  # the socket's buffer may be smaller than the messages
    sender.start()
    got = []
    while True:
        chunk = ours.recv(7_001)  # an odd size: frames and headers split across reads
        if not chunk:
            break
        received += chunk
        while (message := _unframe(received)) is not None:
            got.append(pickle.loads(message))
    sender.join()
    assert got == messages and not received


def test_what_we_frame_is_what_connection_receives():
    ours, conn = _pair()
    payloads = [(1, ["x"]), (2, ["y" * 40_000])]  # within any socket buffer: nothing reads yet
    for p in payloads:
        ours.sendall(_frame(pickle.dumps(p)))
    assert [conn.recv() for _ in payloads] == payloads


def test_an_incomplete_frame_stays_in_the_buffer():
    frame = _frame(b"hello")
    buffer = bytearray(frame[:6])
    assert _unframe(buffer) is None and bytes(buffer) == frame[:6]
    buffer += frame[6:] + frame[:2]
    assert _unframe(buffer) == b"hello" and bytes(buffer) == frame[:2]

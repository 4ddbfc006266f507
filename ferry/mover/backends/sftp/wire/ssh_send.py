"""SSH channel data sealed with AES-GCM in one pass, for Ferry's SFTP sessions.

paramiko sends each packet (at most 32 KiB under sshd) through a Message, its bytes, a
framed copy, a copy with the padding, a slice for the cipher and the length glued back
on: six copies, a dozen Python calls and a socket write per packet. On two cores an
upload is bound by CPU, and sshd needs what the client spends, so `GcmSender` frames
each packet straight from the caller's buffers into one reused buffer, encrypts it into
another (`AESGCM.encrypt_into`), and writes up to BATCH packets at once.

It keeps paramiko's own outbound state (nonce, sequence number, the byte and packet
counts that trigger a rekey) under paramiko's locks, and waits out a key exchange the way
paramiko's own sends do, so paramiko's messages (window adjusts, SFTP control requests)
interleave as before. `GcmSender.usable` says whether a connection qualifies: an AES-GCM
cipher without compression, under exactly the paramiko release this was written against
(PARAMIKO_TESTED, pinned in pyproject.toml) and a `cryptography` whose AESGCM has what it
calls; anything else keeps `Channel.sendall`. tests/backends/test_sftp_send.py runs uploads
through it against sshd, with key exchanges mid-file, and through both fallbacks.

What a server declares is bounded: packets are sized to its maximum packet size only up
to MAX_PACKET (a server may declare 4 GiB, and the buffers are sized from it), and their
padding is random, as RFC 4253 section 6 asks.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import paramiko
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MSG_CHANNEL_DATA = 94
# packet length, padding length, message number, recipient channel, data length
FRAME = struct.Struct(">IBBII")
TAG = 16  # GCM's tag, after the ciphertext
BLOCK = 16
BATCH = 8  # packets sealed before one socket write: a 255 KiB SFTP WRITE at sshd's 32 KiB
NOISE = 4096  # random padding drawn at once: an os.urandom call per packet cost ~0.6 us
MAX_PACKET = 256 * 1024  # a server's maximum packet size is honoured up to this
HEADROOM = 64  # what paramiko keeps below a maximum packet size for the headers
PARAMIKO_TESTED = "5.1.0"  # the paramiko whose private state GcmSender keeps in step
AESGCM_CALLS = ("encrypt_into",)  # what GcmSender calls on cryptography's AESGCM
_P = "_Packetizer__"  # paramiko's Packetizer keeps its state in name-mangled attributes

Buffer = bytes | bytearray | memoryview


class GcmSender:
    """Sends channel data for one session's thread (a `Session` is used by one at a time)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.transport: Any = chan.get_transport()
        self.pk: Any = self.transport.packetizer
        self.data_max = packet_data(chan.out_max_packet_size)
        self.most = FRAME.size + self.data_max + 3 + BLOCK + TAG  # one sealed packet
        self.plain = memoryview(bytearray(self.most))
        self.sealed = memoryview(bytearray(self.most * BATCH))
        self.views: list[memoryview] = []  # what sendall has still to frame
        self.noise, self.noise_at = b"", 0  # random bytes for padding, used from noise_at

    @staticmethod
    def usable(chan: paramiko.Channel) -> bool:
        t: Any = chan.get_transport()
        pk = t.packetizer if t is not None else None
        return (
            paramiko.__version__ == PARAMIKO_TESTED
            and all(callable(getattr(AESGCM, name, None)) for name in AESGCM_CALLS)
            and pk is not None
            and isinstance(getattr(pk, _P + "block_engine_out", None), AESGCM)
            and getattr(pk, _P + "aead_out", False) is True
            and getattr(pk, _P + "compress_engine_out", 0) is None
            and isinstance(getattr(pk, _P + "iv_out", None), bytes)
        )

    def sendall(self, parts: Sequence[Buffer]) -> None:
        """Send the parts, in order, as channel data: up to BATCH packets a socket write."""
        self.views = [memoryview(p).cast("B") for p in parts if len(p)]
        left = sum(len(v) for v in self.views)
        while left:
            n = self._window(min(left, self.data_max), wait=True)
            self._enter()
            try:
                with getattr(self.pk, _P + "write_lock"):
                    out = 0
                    while True:
                        out = self._seal(n, out)
                        left -= n
                        if not left or out + self.most > len(self.sealed):
                            break
                        n = self._window(min(left, self.data_max), wait=False)
                        if not n:
                            break
                    self._write(out)
            finally:
                self.transport.clear_to_send_lock.release()
        self.views = []

    def _window(self, want: int, wait: bool) -> int:
        """Bytes the peer's window and packet size allow: waiting for a window adjust, or
        0 if there is no window left now."""
        chan: Any = self.chan
        with chan.lock:
            if chan.closed:
                raise OSError("Socket is closed")
            if not wait and chan.out_window_size == 0:
                return 0
            n: int = chan._wait_for_send_window(want)
        if n <= 0:
            raise EOFError("SSH channel closed")
        return n

    def _enter(self) -> None:
        """Take the transport's clear-to-send lock, as Transport._send_user_message does:
        user data waits while keys are exchanged."""
        t = self.transport
        start = time.time()
        while True:
            t.clear_to_send.wait(0.1)
            if not t.active:
                raise EOFError("SSH connection closed")
            t.clear_to_send_lock.acquire()
            if t.clear_to_send.is_set():
                return
            t.clear_to_send_lock.release()
            if time.time() > start + t.clear_to_send_timeout:
                raise paramiko.SSHException("Key-exchange timed out waiting for key negotiation")

    def _seal(self, n: int, out: int) -> int:
        """Frame the next `n` bytes of data as one packet and encrypt it into the sealed
        buffer at `out`, as paramiko's Packetizer.send_message would; returns its end."""
        pk, plain, views = self.pk, self.plain, self.views
        # payload: message number, channel, length, data; padded to a whole block
        pad = 3 + BLOCK - ((9 + n + 4) % BLOCK)
        length = 1 + 9 + n + pad
        FRAME.pack_into(plain, 0, length, pad, MSG_CHANNEL_DATA, self.chan.remote_chanid, n)
        at = FRAME.size
        while n:
            v = views[0]
            k = min(len(v), n)
            plain[at : at + k] = v[:k]
            at += k
            n -= k
            if k == len(v):
                views.pop(0)
            else:
                views[0] = v[k:]
        if self.noise_at + pad > len(self.noise):
            self.noise, self.noise_at = os.urandom(NOISE), 0
        plain[at : at + pad] = self.noise[self.noise_at : self.noise_at + pad]
        self.noise_at += pad
        end = out + 4 + length + TAG
        engine, iv = getattr(pk, _P + "block_engine_out"), getattr(pk, _P + "iv_out")
        if not isinstance(engine, AESGCM):  # a key exchange chose another cipher
            raise paramiko.SSHException("SSH cipher changed mid-session")
        # The packet length is the associated data: sent in clear, authenticated.
        engine.encrypt_into(iv, plain[4 : 4 + length], plain[:4], self.sealed[out + 4 : end])
        self.sealed[out : out + 4] = plain[:4]
        setattr(pk, _P + "iv_out", iv[:4] + (int.from_bytes(iv[4:], "big") + 1).to_bytes(8, "big"))
        seq = getattr(pk, _P + "sequence_number_out")
        setattr(pk, _P + "sequence_number_out", (seq + 1) & 0xFFFFFFFF)
        setattr(pk, _P + "sent_packets", getattr(pk, _P + "sent_packets") + 1)
        return end

    def _write(self, out: int) -> None:
        pk = self.pk
        pk.write_all(self.sealed[:out])
        sent = getattr(pk, _P + "sent_bytes") + out
        setattr(pk, _P + "sent_bytes", sent)
        if (
            sent >= pk.REKEY_BYTES or getattr(pk, _P + "sent_packets") >= pk.REKEY_PACKETS
        ) and not pk.need_rekey():
            setattr(pk, _P + "received_bytes_overflow", 0)
            setattr(pk, _P + "received_packets_overflow", 0)
            pk._trigger_rekey()


def packet_data(declared: int) -> int:
    """Channel data per packet for a peer's declared maximum packet size, capped at
    MAX_PACKET: the buffers are sized from it."""
    return min(declared, MAX_PACKET) - HEADROOM


def channel_sender(chan: paramiko.Channel) -> Callable[[Sequence[Buffer]], None]:
    """A `sendall(parts)` for the channel: GcmSender's where it can, else paramiko's."""
    if GcmSender.usable(chan):
        return GcmSender(chan).sendall
    return library_sender(chan)


def library_sender(chan: paramiko.Channel) -> Callable[[Sequence[Buffer]], None]:
    """paramiko's own `Channel.sendall`, taking parts (where GcmSender cannot send)."""

    def sendall(parts: Sequence[Buffer]) -> None:
        # Channel.sendall slices what it is given per packet: a view keeps that copy-free.
        chan.sendall(memoryview(b"".join(parts)))  # type: ignore[arg-type]

    return sendall

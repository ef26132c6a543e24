"""The room's referee: state hashes, desyncs, agreed snapshots and the match result.

Pure like the room it serves: clients' reports go in, verdicts come out as events on the
room's sink. It decides nothing on one player's word: desyncs need a majority to diverge
from, snapshots two identical uploads with the majority hash, results a quorum of votes.
"""

from __future__ import annotations

import hashlib

from battle.catchup import AgreedSnapshot
from battle.config import RoomConfig
from battle.consensus import HashBook, ResultBallot
from battle.events import ChecksumAgreed, DesyncDetected, ResultDecided, SnapshotAgreed
from battle.messages import ClientUpdate, DesyncNotice, decode_snapshot_chunk_untrusted
from battle.peer import CoreSink, Peer

MAX_NOTICE_SLOTS = 32
"""A desync notice names at most this many slots (it rides in every SERVER_UPDATE)."""


class Referee:
    """Judges one room's reports; the room owns it and calls it from its frame loop."""

    def __init__(
        self, room_id: int, match_id: int, players: int, config: RoomConfig, sink: CoreSink
    ) -> None:
        self.room_id = room_id
        self.match_id = match_id
        self.players = players
        self._sink = sink
        self.hashbook = HashBook(players, report_timeout=config.hash_timeout)
        self.ballot = ResultBallot(frozenset(range(players)), timeout=config.result_timeout)
        self.agreed_snapshot: AgreedSnapshot | None = None
        self._snapshot_candidates: dict[int, AgreedSnapshot] = {}
        self.desync_notice: DesyncNotice | None = None
        self.desyncs_found = 0
        self.result: ResultDecided | None = None

    def on_reports(self, peer: Peer, msg: ClientUpdate, last_frame: int, now: float) -> None:
        """Hash reports for closed frames and a result vote, each acknowledged once."""
        slot = peer.entry.slot
        for frame, value in msg.hashes:
            if frame > peer.hash_ack and frame <= last_frame:
                self.hashbook.report(slot, frame, value, now)
                peer.hash_ack = frame
        if msg.result is not None and not peer.result_acked:
            self.ballot.vote(slot, msg.result, now)
            peer.result_acked = True

    def on_snapshot_chunk(self, peer: Peer, body: bytes, last_frame: int) -> None:
        chunk = decode_snapshot_chunk_untrusted(body)
        if chunk.frame > last_frame:
            self._sink.drops["snapshot_future"] += 1
            return
        try:
            done = peer.upload.add(chunk)
        except ValueError as exc:
            self._sink.drops[str(exc)] += 1
            return
        if done is not None:
            peer.snapshot_ack = done.frame
            self._snapshot_candidates[peer.entry.slot] = done
            self._consider_snapshots()

    def _consider_snapshots(self) -> None:
        """Adopt the newest snapshot that two players uploaded byte for byte and whose hash
        the majority reported for its frame.

        The hash alone is not enough: a cheater runs the same simulation, knows the majority
        hash and could attach it to doctored bytes. Two identical uploads from different
        players are (a room of one trusts its only player). Clients should still check the
        state hash after loading a snapshot, since the bytes are opaque to the room.
        """
        current = self.agreed_snapshot
        needed = min(2, self.players)
        by_content: dict[tuple[int, int, bytes], list[int]] = {}
        for slot, candidate in list(self._snapshot_candidates.items()):
            if current is not None and candidate.frame <= current.frame:
                del self._snapshot_candidates[slot]
                continue
            # A room of one has no majority to consult: its only player is the authority.
            if self.players == 1:
                agreed: int | None = candidate.hash
            else:
                agreed = self.hashbook.agreed_hash(candidate.frame)
            if agreed is None:
                continue  # not judged yet (or no majority): keep waiting
            if agreed != candidate.hash:
                del self._snapshot_candidates[slot]
                self._sink.drops["snapshot_disagrees"] += 1
                continue
            digest = hashlib.blake2b(candidate.data, digest_size=16).digest()
            by_content.setdefault((candidate.frame, candidate.hash, digest), []).append(slot)
        for (frame, _, _), slots in sorted(by_content.items(), reverse=True):
            if len(slots) < needed:
                continue
            candidate = self._snapshot_candidates[slots[0]]
            self.agreed_snapshot = candidate
            for slot in [s for s, c in self._snapshot_candidates.items() if c.frame <= frame]:
                del self._snapshot_candidates[slot]
            self._sink.events.append(
                SnapshotAgreed(
                    self.room_id, candidate.frame, candidate.hash, len(candidate.data), slots[0]
                )
            )
            return

    def judge(self, connected: frozenset[int], last_frame: int, now: float) -> ResultDecided | None:
        """Compare state hashes and count result votes; called every tick. Returns the
        result when it is decided now (the room then ends)."""
        book = self.hashbook
        book.set_expected(connected)
        for verdict in book.decide(now):
            if verdict.agreed and verdict.majority_hash is not None:
                self._sink.events.append(
                    ChecksumAgreed(self.room_id, verdict.frame, verdict.majority_hash)
                )
        found_now, book.desyncs = book.desyncs, []
        for found in found_now:
            self.desyncs_found += 1
            self._sink.stats["desyncs"] += 1
            self.desync_notice = DesyncNotice(found.frame, found.minority[:MAX_NOTICE_SLOTS])
            self._sink.events.append(
                DesyncDetected(
                    self.room_id, found.frame, found.majority_hash, found.minority, found.hashes
                )
            )
        if self._snapshot_candidates:
            self._consider_snapshots()
        if self.result is None:
            self.ballot.set_expected(connected)
            outcome = self.ballot.outcome(now)
            if outcome is not None:
                self.result = ResultDecided(
                    self.room_id,
                    self.match_id,
                    last_frame,
                    outcome.result,
                    outcome.dissenters,
                    outcome.reason,
                )
                self._sink.events.append(self.result)
                return self.result
        return None

"""Shared watchlists over HTTP: bilateral opt-in, eligibility at every call, and isolation.

The stateful test drives 2..8 orgs through random enrollments (the same real images in
several orgs: exact duplicates across orgs), invitations, opt-ins, leaves, removals,
contributions, withdrawals, erasures, sharing switches and closes, against a model of who may
see what. After every step each org searches its own index and screens every watchlist; the
model predicts the answer exactly: the status code, the search candidates, and the hits.

Identities are the embeddings of six real faces plus three seeded random unit vectors, all
pairwise far below the threshold, so a probe equal to one identity hits exactly the eligible
entries of that identity (score 1.0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from httpx import Response
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.crypto import Scope
from app.main import create_app
from app.runtime import Runtime
from app.services.orgs import create_org
from app.storage.schema import watchlist_entries, watchlist_members, watchlists
from models.packs import ModelPack
from tests.app.api.conftest import Org, api_settings
from tests.app.api.helpers import audit_rows, b64, enroll, error_code

REAL = ("person0", "person1", "person2", "person3", "person5", "tom")
SYNTHETIC = 3
THRESHOLD = 0.363  # the default pack's calibrated cosine threshold
MARGIN = 0.05  # every pair of identities scores at least this far below the threshold


@dataclass(frozen=True)
class Identities:
    """Real embeddings (their images enroll to these exact vectors) and synthetic ones."""

    names: tuple[str, ...]
    vectors: np.ndarray  # (n, dimension) float32, unit length
    images: dict[int, bytes]  # identity index -> image, for the real ones
    model_id: str

    def probe(self, identity: int) -> dict[str, Any]:
        return {"vector": [float(x) for x in self.vectors[identity]], "model_id": self.model_id}


@pytest.fixture(scope="module")
def identities(runtime: Runtime, face_images: dict[str, bytes]) -> Identities:
    real = [runtime.pipeline.capture(face_images[name]).embedding for name in REAL]
    rng = np.random.default_rng(6)
    synthetic = rng.standard_normal((SYNTHETIC, runtime.pipeline.dimension))
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    vectors = np.vstack([np.stack(real), synthetic]).astype(np.float32)
    scores = vectors @ vectors.T
    assert np.allclose(np.diag(scores), 1.0, atol=1e-5)
    off_diagonal = scores[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < THRESHOLD - MARGIN  # so hits are exactly one identity's
    return Identities(
        names=(*REAL, *(f"synthetic{n}" for n in range(SYNTHETIC))),
        vectors=vectors,
        images={n: face_images[name] for n, name in enumerate(REAL)},
        model_id=runtime.model_id,
    )


# --- small HTTP helpers ---------------------------------------------------------------------


def sharing(client: TestClient, org: Org, enabled: bool) -> None:
    response = client.patch(
        "/v1/org/settings", headers=org.admin, json={"watchlist_sharing": enabled}
    )
    assert response.status_code == 200, response.text
    assert response.json()["watchlist_sharing"] is enabled


def create(client: TestClient, org: Org, name: str = "fraud", **fields: Any) -> str:
    response = client.post("/v1/watchlists", headers=org.admin, json={"name": name, **fields})
    assert response.status_code == 201, response.text
    watchlist_id: str = response.json()["watchlist_id"]
    return watchlist_id


def invite(client: TestClient, owner: Org, watchlist_id: str, org: Org) -> Response:
    return client.post(
        f"/v1/watchlists/{watchlist_id}/invitations",
        headers=owner.admin,
        json={"org_id": org.org_id},
    )


def join(client: TestClient, org: Org, watchlist_id: str) -> Response:
    return client.post(f"/v1/watchlists/{watchlist_id}/membership", headers=org.admin)


def invite_and_join(client: TestClient, owner: Org, watchlist_id: str, org: Org) -> None:
    assert invite(client, owner, watchlist_id, org).status_code == 201
    joined = join(client, org, watchlist_id)
    assert (joined.status_code, joined.json()["state"]) == (200, "active"), joined.text


def contribute(
    client: TestClient, org: Org, watchlist_id: str, reason: str = "confirmed_fraud", **body: Any
) -> Response:
    return client.post(
        f"/v1/watchlists/{watchlist_id}/entries",
        headers=org.admin,
        json={"reason_code": reason, **body},
    )


def contributed(client: TestClient, org: Org, watchlist_id: str, **body: Any) -> list[str]:
    response = contribute(client, org, watchlist_id, **body)
    assert response.status_code == 201, response.text
    entry_ids: list[str] = response.json()["entry_ids"]
    return entry_ids


def screen(
    client: TestClient, org: Org, watchlist_id: str, probe: dict[str, Any], top_k: int = 50
) -> Response:
    return client.post(
        f"/v1/watchlists/{watchlist_id}/screen",
        headers=org.admin,
        json={"probe": probe, "top_k": top_k},
    )


def hits(client: TestClient, org: Org, watchlist_id: str, probe: dict[str, Any]) -> list[str]:
    """The entry ids that `org` gets screening `probe` (asserting a 200)."""
    response = screen(client, org, watchlist_id, probe)
    assert response.status_code == 200, response.text
    return [h["entry_id"] for h in response.json()["hits"]]


def status(response: Response) -> tuple[int, str | None]:
    """(status, error code) of a response; None as the code of a success."""
    if response.status_code < 400:
        return response.status_code, None
    return response.status_code, error_code(response)


def entry_rows(runtime: Runtime, watchlist_id: str) -> list[tuple[str, str, str]]:
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                watchlist_entries.c.id,
                watchlist_entries.c.contributor_org_id,
                watchlist_entries.c.status,
            )
            .where(watchlist_entries.c.watchlist_id == watchlist_id)
            .order_by(watchlist_entries.c.id)
        ).all()
    return [(r.id, r.contributor_org_id, r.status) for r in rows]


def watchlist_state(runtime: Runtime, watchlist_id: str) -> tuple[Any, ...]:
    """Everything the database holds about one watchlist: row, members, entries."""
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(watchlists).where(watchlists.c.id == watchlist_id)).one()
        members = conn.execute(
            sa.select(watchlist_members.c.org_id, watchlist_members.c.state)
            .where(watchlist_members.c.watchlist_id == watchlist_id)
            .order_by(watchlist_members.c.org_id)
        ).all()
    return (tuple(row), tuple(tuple(m) for m in members), tuple(entry_rows(runtime, watchlist_id)))


# --- the state machine ----------------------------------------------------------------------

NOT_VISIBLE = (404, "watchlist_not_found")
CLOSED = (409, "watchlist_closed")
NOT_A_MEMBER = (403, "not_a_member")


@dataclass
class OrgModel:
    org: Org
    sharing: bool
    subjects: dict[str, list[int]] = field(default_factory=dict)  # active: identity per embedding


@dataclass
class WatchlistModel:
    watchlist_id: str
    owner: int
    members: dict[int, str]  # org index -> invited | active | left | removed
    open: bool = True


@dataclass
class EntryModel:
    watchlist: int
    contributor: int
    identity: int
    subject: str | None
    active: bool = True


class WatchlistMachine(RuleBasedStateMachine):
    """Random watchlist traffic among 2..8 fresh orgs, checked against a model after each step."""

    def __init__(
        self, client: TestClient, new_org: Callable[[], Org], identities: Identities
    ) -> None:
        super().__init__()
        self.client = client
        self.new_org = new_org
        self.ids = identities
        self.orgs: list[OrgModel] = []
        self.watchlists: list[WatchlistModel] = []
        self.entries: dict[str, EntryModel] = {}
        self.subject_seq = 0
        self.steps = 0

    # -- the model ---------------------------------------------------------------------------

    def visible(self, w: WatchlistModel, i: int) -> bool:
        return w.owner == i or w.members.get(i) in ("invited", "active")

    def eligible(self, w: WatchlistModel, i: int) -> bool:
        return w.open and w.members.get(i) == "active" and self.orgs[i].sharing

    def gate(self, w: WatchlistModel, i: int) -> tuple[int, str] | None:
        """The error that screening or contributing gets, or None when allowed."""
        if not self.visible(w, i):
            return NOT_VISIBLE
        if not w.open:
            return CLOSED
        if not self.eligible(w, i):
            return NOT_A_MEMBER
        return None

    def org(self, i: int) -> tuple[int, OrgModel]:
        i %= len(self.orgs)
        return i, self.orgs[i]

    def watchlist(self, w: int) -> tuple[int, WatchlistModel]:
        w %= len(self.watchlists)
        return w, self.watchlists[w]

    def pick(self, j: int, among: list[int]) -> tuple[int, OrgModel]:
        """Org `j` of `among` when it is not empty (to steer towards useful steps), else any."""
        # Mixing in the step count varies the choice even where hypothesis draws small numbers.
        return self.org(among[(j + self.steps) % len(among)] if among else j)

    # -- setup -------------------------------------------------------------------------------

    @initialize(
        count=st.integers(2, 8),
        joined=st.lists(st.sampled_from(["active", "active", "invited", None]), min_size=8),
        contributions=st.lists(
            st.tuples(st.integers(0, 7), st.integers(0, len(REAL) + SYNTHETIC - 1)),
            min_size=2,
            max_size=8,
        ),
        sharing_on=st.lists(st.sampled_from([True, True, False]), min_size=8, max_size=8),
    )
    def make_world(
        self,
        count: int,
        joined: list[str | None],
        contributions: list[tuple[int, int]],
        sharing_on: list[bool],
    ) -> None:
        """Orgs and one watchlist with members and entries to begin from.

        Hypothesis runs each example with a random subset of the rules ("swarm testing");
        starting from a populated watchlist keeps every example worth checking.
        """
        for _ in range(count):
            org = self.new_org()
            sharing(self.client, org, True)
            self.orgs.append(OrgModel(org, True))
        self.create_watchlist(0)
        for j in range(1, count):
            if joined[j] is not None:
                self.invite(0, 0, j, steer=False)
            if joined[j] == "active":
                self.opt_in(0, j, steer=False)
        for i, identity in contributions:
            self.contribute_vector(0, i, identity, steer=False)
        for i in range(count):
            if not sharing_on[i]:
                self.set_sharing(i, False, steer=False)

    # -- org-local rules ---------------------------------------------------------------------

    @rule(i=st.integers(0, 7), image=st.integers(0, len(REAL) - 1), again=st.booleans())
    def enroll(self, i: int, image: int, again: bool) -> None:
        i, org = self.org(i)
        if again and org.subjects:
            subject_id = sorted(org.subjects)[image % len(org.subjects)]
        else:
            self.subject_seq += 1
            subject_id = f"o{i}-{org.org.org_id[-6:]}-s{self.subject_seq}"
        enroll(self.client, org.org.admin, subject_id, self.ids.images[image])
        org.subjects.setdefault(subject_id, []).append(image)

    @rule(i=st.integers(0, 7), s=st.integers(0, 7))
    def erase(self, i: int, s: int) -> None:
        i, org = self.org(i)
        if not org.subjects:
            return
        subject_id = sorted(org.subjects)[s % len(org.subjects)]
        response = self.client.delete(f"/v1/subjects/{subject_id}", headers=org.org.admin)
        assert response.status_code == 200, response.text
        copies = [e for e in self.entries.values() if e.active and e.subject == subject_id]
        assert response.json()["watchlist_entries_withdrawn"] == len(copies)
        for entry in copies:
            entry.active = False
        del org.subjects[subject_id]

    @rule(i=st.integers(0, 7), enabled=st.booleans(), steer=st.booleans())
    def set_sharing(self, i: int, enabled: bool, steer: bool) -> None:
        members = {k for wl in self.watchlists for k, s in wl.members.items() if s == "active"}
        i, org = self.pick(i, sorted(members) if steer else [])
        sharing(self.client, org.org, enabled)
        org.sharing = enabled

    # -- watchlist lifecycle -----------------------------------------------------------------

    @precondition(lambda self: len(self.watchlists) < 3)
    @rule(i=st.integers(0, 7))
    def create_watchlist(self, i: int) -> None:
        i, org = self.org(i)
        response = self.client.post(
            "/v1/watchlists", headers=org.org.admin, json={"name": f"list {len(self.watchlists)}"}
        )
        if not org.sharing:
            assert status(response) == (403, "watchlist_sharing_disabled")
            return
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["role"], body["membership"], body["status"], body["region"]) == (
            "owner",
            "active",
            "open",
            "ID",
        )
        self.watchlists.append(WatchlistModel(body["watchlist_id"], i, {i: "active"}))

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), actor=st.integers(0, 7), j=st.integers(0, 7), steer=st.booleans())
    def invite(self, w: int, actor: int, j: int, steer: bool) -> None:
        _, wl = self.watchlist(w)
        a, org = self.org(actor if actor == 7 else wl.owner)  # mostly the owner
        outsiders = [k for k in range(len(self.orgs)) if wl.members.get(k) != "active"]
        j, target = self.pick(j, outsiders if steer else [])
        response = invite(self.client, org.org, wl.watchlist_id, target.org)
        if not self.visible(wl, a) or a != wl.owner:
            expected: tuple[int, str | None] = NOT_VISIBLE
        elif not wl.open:
            expected = CLOSED
        elif wl.members.get(j) == "active":
            expected = (409, "conflict")
        else:
            expected = (201, None)
            wl.members[j] = "invited"
        assert status(response) == expected, response.text

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), j=st.integers(0, 7), steer=st.booleans())
    def opt_in(self, w: int, j: int, steer: bool) -> None:
        _, wl = self.watchlist(w)
        invited = [k for k, state in wl.members.items() if state == "invited"]
        j, org = self.pick(j, invited if steer else [])
        response = join(self.client, org.org, wl.watchlist_id)
        state = wl.members.get(j)
        if not self.visible(wl, j):
            expected: tuple[int, str | None] = NOT_VISIBLE
        elif not wl.open:
            expected = CLOSED
        elif state == "active":
            expected = (200, None)
        elif not org.sharing:
            expected = (403, "watchlist_sharing_disabled")
        else:
            expected = (200, None)
            wl.members[j] = "active"
        assert status(response) == expected, response.text

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), j=st.integers(0, 7))
    def invite_and_opt_in(self, w: int, j: int) -> None:
        """The owner invites an outsider and it opts in at once: the usual way to join."""
        _, wl = self.watchlist(w)
        outsiders = [k for k in range(len(self.orgs)) if k not in wl.members]
        if not outsiders:
            return
        self.invite(w, wl.owner, outsiders[j % len(outsiders)], steer=False)
        self.opt_in(w, outsiders[j % len(outsiders)], steer=False)

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), j=st.integers(0, 7), steer=st.booleans())
    def leave(self, w: int, j: int, steer: bool) -> None:
        _, wl = self.watchlist(w)
        members = [k for k, state in wl.members.items() if state in ("invited", "active")]
        j, org = self.pick(j, members if steer else [])
        response = self.client.delete(
            f"/v1/watchlists/{wl.watchlist_id}/membership", headers=org.org.admin
        )
        if not self.visible(wl, j):
            expected: tuple[int, str | None] = NOT_VISIBLE
        elif j == wl.owner:
            expected = (409, "conflict")
        else:
            expected = (200, None)
            wl.members[j] = "left"
        assert status(response) == expected, response.text

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), actor=st.integers(0, 7), j=st.integers(0, 7), steer=st.booleans())
    def remove_member(self, w: int, actor: int, j: int, steer: bool) -> None:
        _, wl = self.watchlist(w)
        a, org = self.org(actor if actor == 7 else wl.owner)  # mostly the owner
        members = [k for k, state in wl.members.items() if state in ("invited", "active")]
        j, target = self.pick(j, members if steer else [])
        response = self.client.delete(
            f"/v1/watchlists/{wl.watchlist_id}/members/{target.org.org_id}", headers=org.org.admin
        )
        if not self.visible(wl, a) or a != wl.owner:
            expected: tuple[int, str | None] = NOT_VISIBLE
        elif j == wl.owner:
            expected = (409, "conflict")
        elif wl.members.get(j) not in ("invited", "active"):
            expected = (404, "not_found")
        else:
            expected = (200, None)
            wl.members[j] = "removed"
        assert status(response) == expected, response.text

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), actor=st.integers(0, 7))
    def close(self, w: int, actor: int) -> None:
        _, wl = self.watchlist(w)
        a, org = self.org(wl.owner if actor == 7 else actor)  # mostly someone else: 404
        response = self.client.delete(f"/v1/watchlists/{wl.watchlist_id}", headers=org.org.admin)
        if not self.visible(wl, a) or a != wl.owner:
            assert status(response) == NOT_VISIBLE, response.text
            return
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "closed"
        wl.open = False

    # -- entries -----------------------------------------------------------------------------

    def contributors(self, wl: WatchlistModel) -> list[int]:
        return [k for k in range(len(self.orgs)) if self.eligible(wl, k)]

    def _contributed(self, response: Response, w: int, i: int, identities: list[int]) -> None:
        assert response.status_code == 201, response.text
        entry_ids = response.json()["entry_ids"]
        assert len(entry_ids) == len(identities)
        for entry_id, identity in zip(entry_ids, identities, strict=True):
            self.entries[entry_id] = EntryModel(w, i, identity, None)

    @precondition(lambda self: self.watchlists)
    @rule(w=st.integers(0, 2), i=st.integers(0, 7), s=st.integers(0, 7), steer=st.booleans())
    def contribute_subject(self, w: int, i: int, s: int, steer: bool) -> None:
        w, wl = self.watchlist(w)
        i, org = self.pick(i, self.contributors(wl) if steer else [])
        subject_id = sorted(org.subjects)[s % len(org.subjects)] if org.subjects else "o-none"
        response = contribute(self.client, org.org, wl.watchlist_id, subject_id=subject_id)
        expected = self.gate(wl, i)
        if expected is None and subject_id not in org.subjects:
            expected = (404, "subject_not_found")
        if expected is not None:
            assert status(response) == expected, response.text
            return
        self._contributed(response, w, i, org.subjects[subject_id])
        for entry_id in response.json()["entry_ids"]:
            self.entries[entry_id].subject = subject_id

    @precondition(lambda self: self.watchlists)
    @rule(
        w=st.integers(0, 2),
        i=st.integers(0, 7),
        identity=st.integers(0, len(REAL) + SYNTHETIC - 1),
        steer=st.booleans(),
    )
    def contribute_vector(self, w: int, i: int, identity: int, steer: bool) -> None:
        w, wl = self.watchlist(w)
        i, org = self.pick(i, self.contributors(wl) if steer else [])
        response = contribute(self.client, org.org, wl.watchlist_id, probe=self.ids.probe(identity))
        expected = self.gate(wl, i)
        if expected is not None:
            assert status(response) == expected, response.text
            return
        self._contributed(response, w, i, [identity])

    @precondition(lambda self: self.entries)
    @rule(e=st.integers(0, 63), w=st.integers(0, 2), i=st.integers(0, 7), own=st.booleans())
    def withdraw(self, e: int, w: int, i: int, own: bool) -> None:
        entry_id = sorted(self.entries)[e % len(self.entries)]
        entry = self.entries[entry_id]
        w, wl = (entry.watchlist, self.watchlists[entry.watchlist]) if own else self.watchlist(w)
        i, org = self.org(entry.contributor if own else i)
        response = self.client.delete(
            f"/v1/watchlists/{wl.watchlist_id}/entries",
            headers=org.org.admin,
            params={"entry_id": entry_id},
        )
        if not self.visible(wl, i):
            assert status(response) == NOT_VISIBLE, response.text
        elif entry.watchlist != w or entry.contributor != i:
            assert status(response) == (404, "watchlist_entry_not_found"), response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json()["withdrawn"] == [entry_id]
            entry.active = False

    # -- reads -------------------------------------------------------------------------------

    @rule(i=st.integers(0, 7))
    def list_watchlists(self, i: int) -> None:
        i, org = self.org(i)
        response = self.client.get("/v1/watchlists", headers=org.org.admin)
        assert response.status_code == 200, response.text
        seen = {w["watchlist_id"]: w for w in response.json()["items"]}
        expected = {wl.watchlist_id: wl for wl in self.watchlists if self.visible(wl, i)}
        assert set(seen) == set(expected)
        for watchlist_id, wl in expected.items():
            view = seen[watchlist_id]
            assert view["status"] == ("open" if wl.open else "closed")
            assert view["membership"] == wl.members[i]
            if wl.owner == i:
                assert view["role"] == "owner"
                members = {m["org_id"]: m["state"] for m in view["members"]}
                assert members == {self.orgs[j].org.org_id: s for j, s in wl.members.items()}
            else:
                assert (view["role"], view["members"]) == ("member", None)

    def check_search(self, i: int, identity: int) -> None:
        org = self.orgs[i]
        response = self.client.post(
            "/v1/search",
            headers=org.org.admin,
            json={"probe": self.ids.probe(identity), "top_k": 100},
        )
        assert response.status_code == 200, response.text
        candidates = response.json()["candidates"]
        # Isolation first: whatever else is wrong, nothing of another org may come back.
        assert {c["subject_id"] for c in candidates} <= set(org.subjects)
        expected = {s for s, found in org.subjects.items() if identity in found}
        assert {c["subject_id"] for c in candidates} == expected
        assert [c["score"] for c in candidates] == pytest.approx([1.0] * len(expected), abs=1e-4)

    def check_screen(self, w: int, i: int, identity: int) -> None:
        wl = self.watchlists[w]
        response = screen(self.client, self.orgs[i].org, wl.watchlist_id, self.ids.probe(identity))
        expected_error = self.gate(wl, i)
        if expected_error is not None:
            assert status(response) == expected_error, response.text
            return
        assert response.status_code == 200, response.text
        found = response.json()["hits"]
        for hit in found:  # every hit: an entry of this watchlist, both sides eligible now
            entry = self.entries[hit["entry_id"]]
            assert entry.active and entry.watchlist == w
            assert self.eligible(wl, entry.contributor) and self.eligible(wl, i)
        expected = {
            entry_id
            for entry_id, e in self.entries.items()
            if e.active
            and e.watchlist == w
            and e.identity == identity
            and self.eligible(wl, e.contributor)
        }
        assert {h["entry_id"] for h in found} == expected
        assert len(found) == len(expected)
        assert [h["score"] for h in found] == pytest.approx([1.0] * len(expected), abs=1e-4)
        assert {(h["watchlist_id"], h["reason_code"], h["decision"]) for h in found} <= {
            (wl.watchlist_id, "confirmed_fraud", "match")
        }

    def probe_for(self, w: int, salt: int) -> int:
        """An identity with entries in watchlist `w` when there are any (so hits happen)."""
        present = sorted({e.identity for e in self.entries.values() if e.watchlist == w})
        if present and salt % 4:
            return present[salt % len(present)]
        return salt % len(self.ids.names)

    @invariant()
    def isolated_and_exact(self) -> None:
        if not self.orgs:
            return
        self.steps += 1
        for i in range(len(self.orgs)):
            self.check_search(i, (self.steps + i) % len(REAL))
        for w in range(len(self.watchlists)):
            for i in range(len(self.orgs)):
                self.check_screen(w, i, self.probe_for(w, self.steps + i))


def test_state_machine(
    client: TestClient, new_org: Callable[[], Org], identities: Identities
) -> None:
    run_state_machine_as_test(
        lambda: WatchlistMachine(client, new_org, identities),
        settings=settings(
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


# --- targeted tests -------------------------------------------------------------------------


@dataclass
class Consortium:
    """An owner and a member, both opted in with sharing on, in one open watchlist."""

    owner: Org
    member: Org
    watchlist_id: str


@pytest.fixture()
def consortium(client: TestClient, new_org: Callable[[], Org]) -> Consortium:
    owner, member = new_org("Owner Bank"), new_org("Member Lender")
    for org in (owner, member):
        sharing(client, org, True)
    watchlist_id = create(client, owner)
    invite_and_join(client, owner, watchlist_id, member)
    return Consortium(owner, member, watchlist_id)


def test_one_sided_opt_in_never_hits(
    client: TestClient, new_org: Callable[[], Org], identities: Identities
) -> None:
    owner, invited = new_org(), new_org()
    sharing(client, owner, True)
    sharing(client, invited, True)
    wl = create(client, owner)
    assert invite(client, owner, wl, invited).status_code == 201
    probe = identities.probe(1)
    mine = contributed(client, owner, wl, probe=probe)

    # Invited but not accepted: it sees the watchlist, but may neither screen nor contribute.
    assert status(screen(client, invited, wl, probe)) == NOT_A_MEMBER
    assert status(contribute(client, invited, wl, probe=probe)) == NOT_A_MEMBER
    listed = client.get("/v1/watchlists", headers=invited.admin).json()["items"]
    assert [(w["watchlist_id"], w["membership"], w["members"]) for w in listed] == [
        (wl, "invited", None)
    ]
    assert hits(client, owner, wl, probe) == mine  # the owner sees only its own entry
    assert [r[1] for r in entry_rows(owner.runtime, wl)] == [owner.org_id]


def test_sharing_off_on_either_side_stops_hits_and_screening(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    probe = identities.probe(2)
    theirs = contributed(client, member, wl, probe=probe)
    mine = contributed(client, owner, wl, probe=probe)
    assert sorted(hits(client, owner, wl, probe)) == sorted(mine + theirs)

    # The contributor turns sharing off: its entry leaves screening at once; it can't screen.
    sharing(client, member, False)
    assert hits(client, owner, wl, probe) == mine
    assert status(screen(client, member, wl, probe)) == NOT_A_MEMBER
    assert status(contribute(client, member, wl, probe=probe)) == NOT_A_MEMBER
    sharing(client, member, True)
    assert sorted(hits(client, member, wl, probe)) == sorted(mine + theirs)

    # The screener turns sharing off: it can't screen, and its entries are gone for the others.
    sharing(client, owner, False)
    assert status(screen(client, owner, wl, probe)) == NOT_A_MEMBER
    assert hits(client, member, wl, probe) == theirs
    sharing(client, owner, True)
    assert sorted(hits(client, owner, wl, probe)) == sorted(mine + theirs)


def test_leaving_takes_the_leavers_entries_out_at_once(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    probe = identities.probe(3)
    theirs = contributed(client, member, wl, probe=probe)
    mine = contributed(client, owner, wl, probe=probe)

    left = client.delete(f"/v1/watchlists/{wl}/membership", headers=member.admin)
    assert (left.status_code, left.json()) == (
        200,
        {"watchlist_id": wl, "org_id": member.org_id, "state": "left"},
    )
    assert hits(client, owner, wl, probe) == mine
    # The leaver no longer sees the watchlist: 404 (not 403), as for any invisible one.
    assert status(screen(client, member, wl, probe)) == NOT_VISIBLE
    assert status(contribute(client, member, wl, probe=probe)) == NOT_VISIBLE
    assert client.get("/v1/watchlists", headers=member.admin).json()["items"] == []
    # Its entries stay recorded (its to withdraw) but out of screening, also when invited again.
    assert sorted(entry_rows(owner.runtime, wl)) == sorted(
        [(theirs[0], member.org_id, "active"), (mine[0], owner.org_id, "active")]
    )
    assert invite(client, owner, wl, member).status_code == 201
    assert hits(client, owner, wl, probe) == mine
    # Opting in again brings them back.
    assert join(client, member, wl).status_code == 200
    assert sorted(hits(client, owner, wl, probe)) == sorted(mine + theirs)

    owner_leaves = client.delete(f"/v1/watchlists/{wl}/membership", headers=owner.admin)
    assert status(owner_leaves) == (409, "conflict")


def test_owner_removal_takes_the_members_entries_out_at_once(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    probe = identities.probe(4)
    theirs = contributed(client, member, wl, probe=probe)
    mine = contributed(client, owner, wl, probe=probe)
    assert sorted(hits(client, member, wl, probe)) == sorted(mine + theirs)

    removed = client.delete(f"/v1/watchlists/{wl}/members/{member.org_id}", headers=owner.admin)
    assert (removed.status_code, removed.json()["state"]) == (200, "removed")
    assert hits(client, owner, wl, probe) == mine
    assert status(screen(client, member, wl, probe)) == NOT_VISIBLE
    assert status(join(client, member, wl)) == NOT_VISIBLE  # no way back without an invitation
    again = client.delete(f"/v1/watchlists/{wl}/members/{member.org_id}", headers=owner.admin)
    assert status(again) == (404, "not_found")
    view = client.get("/v1/watchlists", headers=owner.admin).json()["items"][0]
    assert {m["org_id"]: m["state"] for m in view["members"]} == {
        owner.org_id: "active",
        member.org_id: "removed",
    }
    themselves = client.delete(f"/v1/watchlists/{wl}/members/{owner.org_id}", headers=owner.admin)
    assert status(themselves) == (409, "conflict")


def test_closed_watchlist_refuses_everything_but_reads(
    client: TestClient, consortium: Consortium, new_org: Callable[[], Org], identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    outsider = new_org()
    sharing(client, outsider, True)
    assert invite(client, owner, wl, outsider).status_code == 201
    probe = identities.probe(0)
    contributed(client, member, wl, probe=probe)

    closed = client.delete(f"/v1/watchlists/{wl}", headers=owner.admin)
    assert (closed.status_code, closed.json()["status"]) == (200, "closed")
    for org in (owner, member):
        assert status(screen(client, org, wl, probe)) == CLOSED
        assert status(contribute(client, org, wl, probe=probe)) == CLOSED
    assert status(join(client, outsider, wl)) == CLOSED
    assert status(invite(client, owner, wl, new_org())) == CLOSED
    listed = client.get("/v1/watchlists", headers=member.admin).json()["items"]
    assert [w["status"] for w in listed] == ["closed"]
    # Closing again is a no-op; members may still leave.
    again = client.delete(f"/v1/watchlists/{wl}", headers=owner.admin)
    assert (again.status_code, again.json()["status"]) == (200, "closed")
    left = client.delete(f"/v1/watchlists/{wl}/membership", headers=member.admin)
    assert left.status_code == 200


def test_cross_org_hit_is_audited_in_both_orgs_and_names_nothing_of_the_contributor(
    client: TestClient, consortium: Consortium, face_images: dict[str, bytes]
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    pii = {"nik": "3171234567890123", "email": "budi@example.co.id", "phone": "+6281234567890"}
    enroll(client, member.admin, "member-cust-77", face_images["person1"], pii=pii)
    entry_ids = contributed(client, member, wl, subject_id="member-cust-77")
    assert len(entry_ids) == 1

    response = screen(client, owner, wl, {"image": b64(face_images["person1"])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [set(h) for h in body["hits"]] == [
        {"watchlist_id", "entry_id", "reason_code", "score", "decision"}
    ]
    hit = body["hits"][0]
    assert (hit["watchlist_id"], hit["entry_id"], hit["reason_code"], hit["decision"]) == (
        wl,
        entry_ids[0],
        "confirmed_fraud",
        "match",
    )
    assert hit["score"] == pytest.approx(1.0, abs=1e-4)  # the very same image
    # Neither the contributor, its subject, its PII nor any frame bytes are in the answer.
    image_b64 = b64(face_images["person1"])
    for secret in (member.org_id, "member-cust-77", *pii.values(), image_b64[100:160]):
        assert secret not in response.text

    def hit_rows(org: Org) -> list[dict[str, Any]]:
        items = client.get("/v1/audit", headers=org.admin, params={"limit": 200}).json()["items"]
        return [
            {"actor": e["actor"], "target": e["target"], "details": e["details"]}
            for e in items
            if e["action"] == "watchlist.hit"
        ]

    owner_keys = client.get("/v1/api-keys", headers=owner.admin).json()["items"]
    owner_key_ids = [k["key_id"] for k in owner_keys]
    assert len(owner_key_ids) == 1
    details = {"watchlist_id": wl, "entry_id": entry_ids[0], "score": hit["score"]}
    assert hit_rows(owner) == [
        {
            "actor": f"api_key:{owner_key_ids[0]}",
            "target": entry_ids[0],
            "details": {**details, "role": "screener"},
        }
    ]
    # The contributor's log must not learn the screener's key id (nor its org).
    assert hit_rows(member) == [
        {
            "actor": f"watchlist:{wl}",
            "target": entry_ids[0],
            "details": {**details, "role": "contributor"},
        }
    ]
    member_log = client.get("/v1/audit", headers=member.admin, params={"limit": 200}).text
    assert owner_key_ids[0] not in member_log
    assert owner.org_id not in member_log
    screened = client.get("/v1/audit", headers=owner.admin).json()["items"]
    assert [(e["action"], e["details"]) for e in screened if e["action"] == "watchlist.screen"] == [
        (
            "watchlist.screen",
            {
                "hits": [{"entry_id": entry_ids[0], "score": hit["score"]}],
                "threshold": THRESHOLD,
                "probe": "image",
            },
        )
    ]

    # A member hitting its own entry is not a cross-org hit: no new `watchlist.hit` rows.
    assert hits(client, member, wl, {"image": image_b64}) == entry_ids
    assert len(hit_rows(member)) == 1
    assert len(hit_rows(owner)) == 1


def test_residency_id_only_cannot_join_a_watchlist_in_another_region(
    client: TestClient, new_org: Callable[[], Org]
) -> None:
    owner, local = new_org(), new_org()
    sharing(client, owner, True)
    sharing(client, local, True)
    refused = client.post(
        "/v1/watchlists", headers=owner.admin, json={"name": "sg", "region": "SG"}
    )
    assert status(refused) == (403, "data_residency_forbids")  # ID-only by default
    settings_patch = {"data_residency": "any"}
    assert (
        client.patch("/v1/org/settings", headers=owner.admin, json=settings_patch).status_code
        == 200
    )
    wl = create(client, owner, "sg", region="SG")
    assert invite(client, owner, wl, local).status_code == 201

    before = watchlist_state(owner.runtime, wl)
    assert status(join(client, local, wl)) == (403, "data_residency_forbids")
    assert watchlist_state(owner.runtime, wl) == before  # still only invited
    assert (
        client.patch("/v1/org/settings", headers=local.admin, json=settings_patch).status_code
        == 200
    )
    assert join(client, local, wl).json()["state"] == "active"


def test_a_watchlist_you_may_not_see_is_404_everywhere(
    client: TestClient, consortium: Consortium, new_org: Callable[[], Org], identities: Identities
) -> None:
    owner, wl = consortium.owner, consortium.watchlist_id
    stranger = new_org()
    sharing(client, stranger, True)
    probe = identities.probe(5)
    entry = contributed(client, owner, wl, probe=probe)[0]

    def attempts(watchlist_id: str) -> dict[str, tuple[int, str | None]]:
        calls = {
            "invite": invite(client, stranger, watchlist_id, stranger),
            "opt in": join(client, stranger, watchlist_id),
            "leave": client.delete(
                f"/v1/watchlists/{watchlist_id}/membership", headers=stranger.admin
            ),
            "remove": client.delete(
                f"/v1/watchlists/{watchlist_id}/members/{owner.org_id}", headers=stranger.admin
            ),
            "close": client.delete(f"/v1/watchlists/{watchlist_id}", headers=stranger.admin),
            "contribute": contribute(client, stranger, watchlist_id, probe=probe),
            "withdraw": client.delete(
                f"/v1/watchlists/{watchlist_id}/entries",
                headers=stranger.admin,
                params={"entry_id": entry},
            ),
            "screen": screen(client, stranger, watchlist_id, probe),
        }
        return {name: status(r) for name, r in calls.items()}

    before = (
        watchlist_state(owner.runtime, wl),
        audit_rows(owner.runtime, owner.org_id),
        audit_rows(owner.runtime, stranger.org_id),
    )
    seen = attempts(wl)
    assert seen == dict.fromkeys(seen, NOT_VISIBLE)
    assert attempts("wl_" + "0" * 32) == seen  # the same as a watchlist that exists nowhere
    assert (
        watchlist_state(owner.runtime, wl),
        audit_rows(owner.runtime, owner.org_id),
        audit_rows(owner.runtime, stranger.org_id),
    ) == before
    assert client.get("/v1/watchlists", headers=stranger.admin).json()["items"] == []
    assert hits(client, owner, wl, probe) == [entry]


def test_a_member_cannot_invite_remove_or_close(
    client: TestClient, consortium: Consortium, new_org: Callable[[], Org]
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    other = new_org()
    before = watchlist_state(owner.runtime, wl), audit_rows(owner.runtime, member.org_id)
    attempts = [
        invite(client, member, wl, other),
        client.delete(f"/v1/watchlists/{wl}/members/{owner.org_id}", headers=member.admin),
        client.delete(f"/v1/watchlists/{wl}/members/{member.org_id}", headers=member.admin),
        client.delete(f"/v1/watchlists/{wl}", headers=member.admin),
    ]
    assert [status(r) for r in attempts] == [NOT_VISIBLE] * 4
    assert (watchlist_state(owner.runtime, wl), audit_rows(owner.runtime, member.org_id)) == before


def test_withdrawing_another_orgs_entry_is_404_and_changes_nothing(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    probe = identities.probe(6)
    mine = contributed(client, owner, wl, probe=probe)
    theirs = contributed(client, member, wl, probe=probe)
    before = (
        watchlist_state(owner.runtime, wl),
        audit_rows(owner.runtime, owner.org_id),
        audit_rows(owner.runtime, member.org_id),
    )
    for entry_ids in (mine, [theirs[0], mine[0]]):  # all or nothing
        response = client.delete(
            f"/v1/watchlists/{wl}/entries", headers=member.admin, params={"entry_id": entry_ids}
        )
        assert status(response) == (404, "watchlist_entry_not_found")
    assert (
        watchlist_state(owner.runtime, wl),
        audit_rows(owner.runtime, owner.org_id),
        audit_rows(owner.runtime, member.org_id),
    ) == before
    assert sorted(hits(client, member, wl, probe)) == sorted(mine + theirs)

    # The contributor itself can: gone from screening at once.
    response = client.delete(
        f"/v1/watchlists/{wl}/entries", headers=member.admin, params={"entry_id": theirs}
    )
    assert response.json() == {"watchlist_id": wl, "withdrawn": theirs}
    assert hits(client, owner, wl, probe) == mine


def test_erasing_a_subject_withdraws_its_watchlist_entries(
    client: TestClient,
    consortium: Consortium,
    face_images: dict[str, bytes],
    identities: Identities,
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    second = create(client, owner, "second")
    invite_and_join(client, owner, second, member)
    enroll(client, member.admin, "to-erase", face_images["person3"])
    enroll(client, member.admin, "to-erase", face_images["person5"])  # two embeddings
    entries = contributed(client, member, wl, subject_id="to-erase")
    entries += contributed(client, member, second, subject_id="to-erase")
    assert len(entries) == 4
    probe = identities.probe(REAL.index("person3"))
    assert len(hits(client, owner, wl, probe)) == 1

    erased = client.delete("/v1/subjects/to-erase", headers=member.admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["watchlist_entries_withdrawn"] == 4
    for watchlist_id in (wl, second):
        assert hits(client, owner, watchlist_id, probe) == []
    with owner.runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(watchlist_entries.c.status, watchlist_entries.c.vector).where(
                watchlist_entries.c.id.in_(entries)
            )
        ).all()
    assert sorted(tuple(r) for r in rows) == [("withdrawn", None)] * 4


def test_every_watchlist_endpoint_needs_the_watchlist_scope(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, wl = consortium.owner, consortium.watchlist_id
    match_only = owner.key(Scope.MATCH)
    probe = {"probe": identities.probe(0)}
    calls = [
        client.post("/v1/watchlists", headers=match_only, json={"name": "x"}),
        client.get("/v1/watchlists", headers=match_only),
        client.post(f"/v1/watchlists/{wl}/screen", headers=match_only, json=probe),
        client.post(
            f"/v1/watchlists/{wl}/entries",
            headers=match_only,
            json={"reason_code": "confirmed_fraud", **probe},
        ),
        client.delete(f"/v1/watchlists/{wl}", headers=match_only),
    ]
    assert [status(r) for r in calls] == [(403, "forbidden")] * len(calls)
    scoped = owner.key(Scope.WATCHLIST)
    assert client.post(f"/v1/watchlists/{wl}/screen", headers=scoped, json=probe).status_code == 200


def test_screening_is_identical_after_a_restart(
    tmp_path: Path, default_pack: ModelPack, face_images: dict[str, bytes]
) -> None:
    """Watchlist indexes are rebuilt from the database, eligibility included."""
    settings_ = api_settings(
        tmp_path / "home", f"sqlite:///{tmp_path / 'wajah.db'}", default_pack.directory.parent
    )
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((2, 128)).astype(np.float32)
    probes = [{"vector": [float(x) for x in v], "model_id": default_pack.model_id} for v in vectors]
    probes.append({"image": b64(face_images["person0"])})

    with TestClient(create_app(settings_)) as client:
        runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]

        def org(name: str) -> Org:
            org_id, key = create_org(runtime, name)
            made = Org(org_id, key.plaintext, runtime)
            sharing(client, made, True)
            return made

        owner, member, quiet, leaver = org("A"), org("B"), org("C"), org("D")
        wl, closed = create(client, owner, "open"), create(client, owner, "closed")
        for other in (member, quiet, leaver):
            invite_and_join(client, owner, wl, other)
        invite_and_join(client, owner, closed, member)
        enroll(client, member.admin, "b-cust", face_images["person0"])
        contributed(client, member, wl, subject_id="b-cust")
        for contributor in (owner, member, quiet, leaver):
            contributed(client, contributor, wl, probe=probes[0])
        contributed(client, member, wl, probe=probes[1])
        contributed(client, member, closed, probe=probes[0])
        withdrawn = contributed(client, owner, wl, probe=probes[1])
        gone = client.delete(
            f"/v1/watchlists/{wl}/entries", headers=owner.admin, params={"entry_id": withdrawn}
        )
        assert gone.status_code == 200
        assert (
            client.delete(f"/v1/watchlists/{wl}/membership", headers=leaver.admin).status_code
            == 200
        )
        sharing(client, quiet, False)
        assert client.delete(f"/v1/watchlists/{closed}", headers=owner.admin).status_code == 200

        def answers(client: TestClient) -> list[Any]:
            seen: list[Any] = []
            for screener in (owner, member, quiet, leaver):
                for watchlist_id in (wl, closed):
                    for probe in probes:
                        response = screen(client, screener, watchlist_id, probe)
                        if response.status_code != 200:
                            seen.append(status(response))
                            continue
                        found = response.json()["hits"]
                        seen.append(sorted((h["entry_id"], round(h["score"], 4)) for h in found))
            return seen

        before = answers(client)
    shape = [len(a) if isinstance(a, list) else a for a in before]
    assert shape == [
        *[2, 1, 1, CLOSED, CLOSED, CLOSED],  # owner: its own and B's copies, B's, B's subject
        *[2, 1, 1, CLOSED, CLOSED, CLOSED],  # member
        *[NOT_A_MEMBER] * 3 + [NOT_VISIBLE] * 3,  # quiet: sharing off; never in `closed`
        *[NOT_VISIBLE] * 6,  # leaver
    ]

    with TestClient(create_app(settings_)) as client:
        assert answers(client) == before


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(
    client: TestClient, consortium: Consortium, identities: Identities
) -> None:
    owner, member, wl = consortium.owner, consortium.member, consortium.watchlist_id
    probe = identities.probe(7)
    entry = contributed(client, owner, wl, probe=probe)[0]
    enroll_free = {"reason_code": "confirmed_fraud"}
    short = {"vector": [0.1] * 127, "model_id": identities.model_id}
    other_model = {**probe, "model_id": "buffalo_l"}
    zero = {"vector": [0.0] * 128, "model_id": identities.model_id}
    entries, screen_path = f"/v1/watchlists/{wl}/entries", f"/v1/watchlists/{wl}/screen"
    cases: dict[str, tuple[str, str, dict[str, Any], tuple[int, str]]] = {
        "create: empty name": (
            "POST",
            "/v1/watchlists",
            {"json": {"name": ""}},
            (422, "invalid_request"),
        ),
        "create: blank name": (
            "POST",
            "/v1/watchlists",
            {"json": {"name": "   "}},
            (422, "invalid_request"),
        ),
        "create: unknown field": (
            "POST",
            "/v1/watchlists",
            {"json": {"name": "x", "owner": member.org_id}},
            (422, "invalid_request"),
        ),
        "invite: unknown org": (
            "POST",
            f"/v1/watchlists/{wl}/invitations",
            {"json": {"org_id": "org_" + "0" * 32}},
            (404, "org_not_found"),
        ),
        "invite: no org id": (
            "POST",
            f"/v1/watchlists/{wl}/invitations",
            {"json": {}},
            (422, "invalid_request"),
        ),
        "invite: a member": (
            "POST",
            f"/v1/watchlists/{wl}/invitations",
            {"json": {"org_id": member.org_id}},
            (409, "conflict"),
        ),
        "remove: unknown org": (
            "DELETE",
            f"/v1/watchlists/{wl}/members/org_{'0' * 32}",
            {},
            (404, "not_found"),
        ),
        "entry: bad reason code": (
            "POST",
            entries,
            {"json": {"reason_code": "Confirmed Fraud!", "probe": probe}},
            (422, "invalid_request"),
        ),
        "entry: no reason code": (
            "POST",
            entries,
            {"json": {"probe": probe}},
            (422, "invalid_request"),
        ),
        "entry: both subject and probe": (
            "POST",
            entries,
            {"json": {**enroll_free, "subject_id": "someone", "probe": probe}},
            (422, "invalid_request"),
        ),
        "entry: neither subject nor probe": (
            "POST",
            entries,
            {"json": enroll_free},
            (422, "invalid_request"),
        ),
        "entry: unknown subject": (
            "POST",
            entries,
            {"json": {**enroll_free, "subject_id": "nobody"}},
            (404, "subject_not_found"),
        ),
        "entry: vector of 127": (
            "POST",
            entries,
            {"json": {**enroll_free, "probe": short}},
            (422, "invalid_probe"),
        ),
        "entry: other model": (
            "POST",
            entries,
            {"json": {**enroll_free, "probe": other_model}},
            (422, "invalid_probe"),
        ),
        "entry: zero vector": (
            "POST",
            entries,
            {"json": {**enroll_free, "probe": zero}},
            (422, "invalid_probe"),
        ),
        "entry: image and vector": (
            "POST",
            entries,
            {"json": {**enroll_free, "probe": {**probe, "image": b64(b"x")}}},
            (422, "invalid_probe"),
        ),
        "entry: not base64": (
            "POST",
            entries,
            {"json": {**enroll_free, "probe": {"image": "***"}}},
            (422, "invalid_request"),
        ),
        "withdraw: no entry id": ("DELETE", entries, {}, (422, "invalid_request")),
        "withdraw: unknown entry": (
            "DELETE",
            entries,
            {"params": {"entry_id": "wle_nope"}},
            (404, "watchlist_entry_not_found"),
        ),
        "withdraw: 101 ids": (
            "DELETE",
            entries,
            {"params": {"entry_id": [entry] * 101}},
            (422, "invalid_request"),
        ),
        "screen: top_k 0": (
            "POST",
            screen_path,
            {"json": {"probe": probe, "top_k": 0}},
            (422, "invalid_request"),
        ),
        "screen: top_k 51": (
            "POST",
            screen_path,
            {"json": {"probe": probe, "top_k": 51}},
            (422, "invalid_request"),
        ),
        "screen: no probe": ("POST", screen_path, {"json": {"top_k": 5}}, (422, "invalid_request")),
        "screen: vector of 127": (
            "POST",
            screen_path,
            {"json": {"probe": short}},
            (422, "invalid_probe"),
        ),
        "screen: other model": (
            "POST",
            screen_path,
            {"json": {"probe": other_model}},
            (422, "invalid_probe"),
        ),
        "screen: empty probe": (
            "POST",
            screen_path,
            {"json": {"probe": {}}},
            (422, "invalid_probe"),
        ),
    }

    def snapshot() -> tuple[Any, ...]:
        return (
            watchlist_state(owner.runtime, wl),
            audit_rows(owner.runtime, owner.org_id),
            audit_rows(owner.runtime, member.org_id),
            client.get("/v1/watchlists", headers=owner.admin).json(),
        )

    before = snapshot()
    seen = {
        name: status(client.request(method, path, headers=owner.admin, **kwargs))
        for name, (method, path, kwargs, _) in cases.items()
    }
    assert seen == {name: expected for name, (_, _, _, expected) in cases.items()}
    assert snapshot() == before
    assert hits(client, member, wl, probe) == [entry]


def test_switching_to_id_only_ends_eligibility_in_a_foreign_region(
    client: TestClient, new_org: Callable[[], Org], identities: Identities
) -> None:
    owner, member = new_org(), new_org()
    for org in (owner, member):
        sharing(client, org, True)
        assert (
            client.patch(
                "/v1/org/settings", headers=org.admin, json={"data_residency": "any"}
            ).status_code
            == 200
        )
    wl = create(client, owner, "sg", region="SG")
    invite_and_join(client, owner, wl, member)
    probe = identities.probe(8)
    theirs = contributed(client, member, wl, probe=probe)
    mine = contributed(client, owner, wl, probe=probe)
    assert sorted(hits(client, owner, wl, probe)) == sorted(mine + theirs)

    # Its data may no longer be screened in SG, nor may it screen there.
    patched = client.patch(
        "/v1/org/settings", headers=member.admin, json={"data_residency": "ID-only"}
    )
    assert patched.status_code == 200
    assert hits(client, owner, wl, probe) == mine
    assert status(screen(client, member, wl, probe)) == NOT_A_MEMBER
    assert status(contribute(client, member, wl, probe=probe)) == NOT_A_MEMBER

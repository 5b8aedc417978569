"""Agent revisions and tags: which definition of an agent a run runs.

`runrelay agents publish CONFIG --tag production` stores, for every agent of CONFIG whose
definition changed since its newest stored revision, a new revision (1, 2, 3 …), then points each
named tag at the newest revision of its agent. Revisions never change once written.

Resolution (`AgentCatalog`):
- `agent` (a name or shortcut) or `agent_id` alone: the agent's newest stored revision; an agent
  with no stored revision runs its config file definition as revision 1.
- `agent_id` + `revision`: exactly that revision (404 `revision_not_found` otherwise).
- `tag`: the revision the tag points at; a tag only declared in the config file (`tags:`) leads
  to its agent's newest revision.
The worker loads the pinned revision of each run (`pinned`), not the file's current text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, bindparam
from sqlmodel import Session, col, select

from runrelay.agent.config import TAG_PATTERN, AgentNotFound, AgentsConfig, AgentSpec, Registry
from runrelay.server.engine import autocommit
from runrelay.server.errors import Invalid, NotFound
from runrelay.server.expiring import Expiring
from runrelay.server.loop_database import on_loop
from runrelay.server.tables import AgentRevision, AgentTag, Tenant, loaded, table_of, utcnow
from runrelay.types import RunCreate

_UNPUBLISHED_FOR_S = 5.0
# How long an admission trusts what it read of an agent's newest revision number and of the
# tenant's row (limits): a run is admitted with one database read fewer, and a publish or a
# `runrelay tenants update` reaches each API process within this, as a revoked key does
# (`store.KEY_CACHE_S`).
ADMISSION_CACHE_S = 1.0
_ADMISSION_CACHE_MAX = 10_000


class RevisionNotFound(NotFound):
    code = "revision_not_found"
    param = "revision"

    def __init__(self, agent_id: str, revision: int) -> None:
        super().__init__(f"agent {agent_id!r} has no revision {revision}")


class PublishError(Invalid):
    """The publish request cannot be carried out; the message says why and what to pass."""


def definition(agent: AgentSpec) -> dict[str, Any]:
    """What a revision stores: everything but the revision number and the tags (moving a tag
    does not make a new revision)."""
    return agent.model_dump(mode="json", exclude={"revision", "tags"})


def digest(defn: dict[str, Any]) -> str:
    return hashlib.sha256(
        json.dumps(defn, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass
class PublishReport:
    # agent id → (revision, whether publishing created it)
    revisions: dict[str, tuple[int, bool]] = field(default_factory=dict)
    # tag → (agent id, revision)
    tags: dict[str, tuple[str, int]] = field(default_factory=dict)


_NEWEST_NUMBER = (
    select(AgentRevision.revision)
    .where(col(AgentRevision.agent_id) == bindparam("agent_id"))
    .order_by(col(AgentRevision.revision).desc())
    .limit(1)
)
_TENANTS = table_of(Tenant)
# An admission's two reads in one round trip: the tenant (by id) and its agent's newest number.
_TENANT_AND_NEWEST = select(_NEWEST_NUMBER.scalar_subquery(), *_TENANTS.c).where(
    _TENANTS.c.id == bindparam("tenant_id")
)


def _spec(row: AgentRevision) -> AgentSpec:
    return AgentSpec.model_validate({**row.definition, "revision": row.revision})


class AgentCatalog:
    """The config file's agents, overlaid with the revisions and tags stored in the database."""

    def __init__(
        self, engine: Engine, registry: Registry, *, admission_cache_s: float = ADMISSION_CACHE_S
    ) -> None:
        self.engine = engine
        self.single = autocommit(engine)
        self.registry = registry
        # Stored revisions never change: each one is read from the database once per catalog.
        # A config file agent with none stored is taken as such for a few seconds at a time
        # (a publish then shows within that; it stores the same definition the file has).
        self._stored: dict[tuple[str, int], AgentSpec] = {}
        self._unpublished: dict[str, float] = {}  # agent id → until when (monotonic)
        self.admission_cache_s = admission_cache_s
        # (agent id, tenant id) → the row read, from when its read began
        self._admissions: Expiring[tuple[str, str], Sequence[Any]] = Expiring(
            admission_cache_s, _ADMISSION_CACHE_MAX
        )

    # Reading ----------------------------------------------------------------------------------

    def for_request(self, body: RunCreate) -> AgentSpec:
        """The agent revision a run request names: by `tag`, by `agent_id` (+ `revision`), or
        by name or shortcut (`agent`); `AgentNotFound` / `RevisionNotFound` otherwise."""
        if body.tag is not None:
            return self.by_tag(body.tag)
        if body.agent_id is not None:
            if body.revision is not None:
                return self.pinned(body.agent_id, body.revision)
            return self.by_ref(body.agent_id)
        assert body.agent is not None  # RunCreate guarantees exactly one way
        return self.by_ref(body.agent)

    def _newest(self, session: Session, agent_id: str) -> AgentRevision | None:
        query = (
            select(AgentRevision)
            .where(AgentRevision.agent_id == agent_id)
            .order_by(col(AgentRevision.revision).desc())
            .limit(1)
        )
        return session.exec(query).first()

    def _file_agent(self, ref: str) -> AgentSpec | None:
        try:
            return self.registry.resolve(ref)
        except AgentNotFound:
            return None

    async def for_request_async(self, body: RunCreate) -> AgentSpec:
        """`for_request`, awaited: a request by name or id (without a revision) reads only the
        newest revision's number, on the loop's database when the process attached one."""
        database = on_loop(self.engine)
        if database is None or body.tag is not None or body.revision is not None:
            return await asyncio.to_thread(self.for_request, body)
        ref, file_agent, agent_id = self._by_ref(body)
        row = await database.first(_NEWEST_NUMBER, {"agent_id": agent_id})
        return await self._newest_async(ref, file_agent, agent_id, None if row is None else row[0])

    async def with_tenant_async(
        self, body: RunCreate, tenant_id: str
    ) -> tuple[AgentSpec, Tenant] | None:
        """`for_request_async` and the tenant with id `tenant_id`, read in one statement on the
        loop's database, or as read less than `admission_cache_s` ago for the same agent and
        tenant. None when that cannot answer: no loop database, a request by tag or revision
        (other reads), or no tenant with that id; the caller reads them apart then."""
        database = on_loop(self.engine)
        if database is None or body.tag is not None or body.revision is not None:
            return None
        ref, file_agent, agent_id = self._by_ref(body)
        key = (agent_id, tenant_id)
        began = time.monotonic()
        cached = self._admissions.fresh(key, began)
        if cached is not None:
            row = cached[1]
        else:
            params = {"agent_id": agent_id, "tenant_id": tenant_id}
            found = await database.first(_TENANT_AND_NEWEST, params)
            if found is None:
                return None
            if self.admission_cache_s > 0:
                self._admissions.put(key, found, began)
            row = found
        tenant = loaded(Tenant, dict(zip(_TENANTS.c.keys(), row[1:], strict=True)))
        return await self._newest_async(ref, file_agent, agent_id, row[0]), tenant

    def _by_ref(self, body: RunCreate) -> tuple[str, AgentSpec | None, str]:
        """A request by name or id: the reference, the config file's agent, the agent id."""
        ref = body.agent_id if body.agent_id is not None else body.agent
        assert ref is not None  # RunCreate guarantees exactly one way
        file_agent = self._file_agent(ref)
        return ref, file_agent, file_agent.id if file_agent else ref

    async def _newest_async(
        self, ref: str, file_agent: AgentSpec | None, agent_id: str, number: int | None
    ) -> AgentSpec:
        if number is not None and (agent_id, number) not in self._stored:  # read it once
            return await asyncio.to_thread(self._newest_of, ref, file_agent, agent_id, number)
        return self._newest_of(ref, file_agent, agent_id, number)

    def by_ref(self, ref: str) -> AgentSpec:
        """A name, shortcut or id → the agent's newest revision. Every call asks the database
        which revision is newest (a publish shows at once); only its number, when that
        revision's definition was read before."""
        file_agent = self._file_agent(ref)
        agent_id = file_agent.id if file_agent else ref
        with self.single.connect() as conn:  # Core: no ORM session (every POST reads it)
            number = conn.execute(_NEWEST_NUMBER, {"agent_id": agent_id}).scalar()
        return self._newest_of(ref, file_agent, agent_id, number)

    def _newest_of(
        self, ref: str, file_agent: AgentSpec | None, agent_id: str, number: int | None
    ) -> AgentSpec:
        """The agent `ref` names, revision `number` (its newest stored; None: none stored).
        Reads the revision's definition the first time."""
        if number is not None and (agent_id, number) not in self._stored:
            with Session(self.single) as session:
                row = session.get(AgentRevision, (agent_id, number))
            if row is not None:
                self._stored[agent_id, number] = _spec(row)
        if number is not None and (stored := self._stored.get((agent_id, number))) is not None:
            return stored
        if file_agent is None:
            self.registry.resolve(ref)  # raises AgentNotFound with suggestions
        assert file_agent is not None
        return file_agent

    def known(self, agent_id: str, revision: int) -> AgentSpec | None:
        """What `pinned` returns without a database read, if it needs none: a revision read
        before, or an unpublished file agent's (for a little while after the last read)."""
        file_agent = self._file_agent(agent_id)
        canonical = file_agent.id if file_agent else agent_id
        if (stored := self._stored.get((canonical, revision))) is not None:
            return stored
        unpublished = self._unpublished.get(canonical, 0.0) > time.monotonic()
        if unpublished and file_agent is not None and revision == file_agent.revision:
            return file_agent
        return None

    def pinned(self, agent_id: str, revision: int) -> AgentSpec:
        if (known := self.known(agent_id, revision)) is not None:
            return known
        file_agent = self._file_agent(agent_id)
        canonical = file_agent.id if file_agent else agent_id
        with Session(self.single) as session:
            row = session.get(AgentRevision, (canonical, revision))
            newest = None if row else self._newest(session, canonical)
        if row is not None:
            self._stored[canonical, revision] = spec = _spec(row)
            return spec
        if file_agent is not None and newest is None and revision == file_agent.revision:
            self._unpublished[canonical] = time.monotonic() + _UNPUBLISHED_FOR_S
            return file_agent
        if file_agent is None and newest is None:
            self.registry.resolve(agent_id)  # raises AgentNotFound with suggestions
        raise RevisionNotFound(canonical, revision)

    def by_tag(self, tag: str) -> AgentSpec:
        with Session(self.engine) as session:
            pointer = session.get(AgentTag, tag)
            row = (
                session.get(AgentRevision, (pointer.agent_id, pointer.revision))
                if pointer
                else None
            )
        if row is not None:
            return _spec(row)
        return self.by_ref(self.registry.by_tag(tag).id)

    def tags(self) -> dict[str, tuple[str, int]]:
        """Every tag → the (agent id, revision) it points at: the database's tags, and the
        config file's where the database has none of that name (as `by_tag` resolves them)."""
        found: dict[str, tuple[str, int]] = {}
        for agent in self.registry.agents:
            for tag in agent.tags:
                found[tag] = (agent.id, agent.revision)
        with Session(self.engine) as session:
            for pointer in session.exec(select(AgentTag)).all():
                found[pointer.tag] = (pointer.agent_id, pointer.revision)
        return found

    # Publishing -------------------------------------------------------------------------------

    def publish(
        self, config: AgentsConfig, tags: Sequence[str] = (), agent: str | None = None
    ) -> PublishReport:
        agents = [a for module in config.modules for a in module.agents]
        targets = {tag: _tag_target(tag, agents, agent) for tag in tags}
        report = PublishReport()
        with Session(self.engine) as session:
            for spec in agents:
                defn = definition(spec)
                newest = self._newest(session, spec.id)
                if newest is not None and newest.digest == digest(defn):
                    report.revisions[spec.id] = (newest.revision, False)
                    continue
                number = newest.revision + 1 if newest else 1
                session.add(
                    AgentRevision(
                        agent_id=spec.id, revision=number, definition=defn, digest=digest(defn)
                    )
                )
                report.revisions[spec.id] = (number, True)
            for tag, target in targets.items():
                number = report.revisions[target.id][0]
                pointer = session.get(AgentTag, tag) or AgentTag(
                    tag=tag, agent_id=target.id, revision=number
                )
                pointer.agent_id, pointer.revision, pointer.updated_at = target.id, number, utcnow()
                session.add(pointer)
                report.tags[tag] = (target.id, number)
            session.commit()
        return report


def _tag_target(tag: str, agents: list[AgentSpec], name: str | None) -> AgentSpec:
    """The agent a tag moves to: the one named, else the one declaring the tag, else the only
    agent of the config."""
    if not TAG_PATTERN.match(tag):
        raise PublishError(f"tag {tag!r} must match ^[a-z0-9][a-z0-9\\-_]*$")
    if name is not None:
        for spec in agents:
            if name in (spec.name, spec.id):
                return spec
        raise PublishError(f"--agent {name!r} is not in the config")
    declaring = [spec for spec in agents if tag in spec.tags]
    if declaring:
        return declaring[0]
    if len(agents) == 1:
        return agents[0]
    raise PublishError(
        f"no agent in the config declares tag {tag!r} (under `tags:`), and it has "
        f"{len(agents)} agents: name one with --agent"
    )

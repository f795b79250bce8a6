"""QIDO-RS → one parameterised SQL statement, with the caller's access rule inside it.

Shapes (aliases ``st`` studies, ``se`` series, ``i`` instances; series and instance searches
join up to the study, which carries the access columns):

- study: ``FROM studies st``, ordered by study date and time (newest first, nulls last), then
  Study Instance UID; served in index order by ``studies_date_idx`` (admin) or
  ``studies_structure_date_idx`` (producer, professional), or by a selective key's index
  (patient ID, INS, accession, UID, trigram name).
- series: ``FROM series se JOIN studies st``; within a study by series number then Series
  Instance UID (``series_study_idx``); across studies, in study order first.
- instance: ``FROM instances i JOIN series se JOIN studies st``; within a series by instance
  number then SOP Instance UID (``instances_series_idx``); across series or studies, in the
  parents' order first.

The sort always ends with the unique key, so ``limit``/``offset`` pages are stable and never
repeat a result. Values always travel as bind parameters; the SQL text depends only on the
query's shape.

Matching (on top of what `krypton.dicom.qido` validates):

- PN without fuzzy matching: case- and accent-insensitive, on the normalised search column
  (`store.normalise_pn` on both sides): ``hélène^marie`` equals ``HELENE^MARIE``; wildcards
  work the same way (``dup*``).
- PN with ``fuzzymatching=true``: every word of the value must be the prefix of a word of the
  name, in any component and any order: ``dup`` and ``jean`` both find ``DUPONT^JEAN``.
  A regular expression per word decides; for PatientName the words of two letters or more
  are first looked up in ``studies_name_keys_idx`` (the 2-12 letter prefixes of each name
  word, region-wide and per structure, migration 0004): one posting list per word, the
  structure's own where the access arm is a structure's (`_name_scope`).
- Other text VRs: exact and case-sensitive (PS3.4), wildcards through ``LIKE``.
- TM single values match the whole precision they name (``10`` is 10:00:00 to 10:59:59.999999).
"""

from __future__ import annotations

import re
import time as _clock
from collections.abc import Sequence
from datetime import date, time
from typing import Final

import asyncpg

from krypton.contracts.common.v1 import Actor, RoleValues
from krypton.contracts.index.v1 import (
    Match,
    MatchKindValues,
    QidoLevelValues,
    QidoQuery,
    QidoRequest,
    QidoResponse,
)
from krypton.core.errors import ValidationError
from krypton.dicom.qido import matching_keys
from krypton.index.render import ATTRIBUTES, render_results, return_keys
from krypton.index.store import normalise_pn, parse_da

__all__ = [
    "MAX_LIMIT",
    "GrantHolders",
    "access_arms",
    "access_basis",
    "access_predicate",
    "actor_has_grants",
    "build_qido_sql",
    "run_qido",
]

#: Largest page the index serves whatever the request says (the gateway clamps lower).
MAX_LIMIT: Final = 5000

_STUDY_ORDER: Final = "st.study_date DESC NULLS LAST, st.study_time DESC NULLS LAST, st.study_uid"
_SERIES_ORDER: Final = "se.series_number, se.series_uid"
_INSTANCE_ORDER: Final = "i.instance_number, i.sop_instance_uid"

# PN attributes match on their normalised column, not on the stored DICOM string.
_PN_SEARCH: Final = {
    "PatientName": "st.patient_name_search",
    "ReferringPhysicianName": "st.referring_physician_search",
}
_INT4_MAX: Final = 2**31 - 1
# Word prefixes held by studies_name_keys_idx (index.name_keys, migration 0004).
_PREFIX_MIN: Final = 2
_PREFIX_MAX: Final = 12
_NAME_KEYS: Final = "index.name_keys(st.structure, st.patient_name_search)"
_TM_RE: Final = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")


# A grant is live while valid_from <= now() < valid_until (NULL: open-ended) and active.
_LIVE: Final = (
    "g.active AND g.valid_from <= now() AND (g.valid_until IS NULL OR g.valid_until > now())"
)
# Whose grants count for the actor ($1): their own, and those of the communities they
# currently belong to. The ARRAY(...) is uncorrelated, so PostgreSQL evaluates it once per
# statement and both arms stay index conditions (access_grants_actor_idx and
# access_grants_community_idx).
_HOLDER: Final = (
    "(g.actor_sub = $1 OR g.community_id = ANY(ARRAY(SELECT m.community_id"
    " FROM index.community_members m WHERE m.actor_sub = $1 AND m.active)))"
)


def access_predicate(actor: Actor, alias: str, *, grants: bool = True) -> tuple[str, list[object]]:
    """Return the SQL condition (over the studies alias `alias`) of what `actor` may see.

    The access rules of the authorize service, in SQL over the access projection (see
    `krypton.index.access`; `krypton.authorize.policy` has the same rules over its own state):

    - admin: everything; patient: the studies of their INS;
    - producer (a structure's system): the studies of its structure;
    - professional: the studies of their structure, and the studies of a patient without an
      active opposition for which they hold a live grant (care relationship, redeemed share
      code, break-the-glass) covering the patient or that study, or belong to a community
      holding one (the patient's file shared with a tumour board);
    - anyone else, or a role without the identifier it needs: nothing.

    Placeholders are numbered from ``$1`` within the fragment. This is the one place the rule
    lives in SQL; QIDO and WADO lookups both embed it.

    Args:
        actor: The verified caller.
        alias: The alias of ``index.studies`` in the statement.
        grants: False when the caller checked that the professional holds no live grant,
            directly or through a community (`actor_has_grants`): the condition is then the
            structure's alone, which keeps the index-ordered listing plan. Leaving it True is
            always correct.
    """
    if actor.role is RoleValues.ADMIN:
        return "TRUE", []
    if actor.role is RoleValues.PRODUCER and actor.structure:
        return f"{alias}.structure = $1", [actor.structure]
    if actor.role is RoleValues.PATIENT and actor.ins:
        return f"{alias}.patient_ins = $1", [actor.ins]
    if actor.role is not RoleValues.PROFESSIONAL:
        return "FALSE", []
    if not grants:
        if actor.structure:
            return f"{alias}.structure = $1", [actor.structure]
        return "FALSE", []
    granted = _granted(alias)
    if actor.structure:
        return f"({alias}.structure = $2 OR {granted})", [actor.sub, actor.structure]
    return granted, [actor.sub]


def _granted(alias: str) -> str:
    """The grant arm of the professional's rule; ``$1`` is the professional's subject."""
    # The ANY(ARRAY(...)) arm is an index condition on studies_patient_key_idx, evaluated once
    # per statement: the patients of the live grants, minus those with an active opposition
    # (checked once per grant, not once per study: an opposition is per patient key, the key
    # the study shares with its grant). The EXISTS checks the grant covers this very study
    # (patient or study scope).
    return (
        f"({alias}.patient_key = ANY(ARRAY(SELECT g.patient_key FROM index.access_grants g"
        f" WHERE {_HOLDER} AND {_LIVE} AND NOT EXISTS (SELECT 1 FROM index.oppositions o"
        f" WHERE o.patient_key = g.patient_key AND o.active)))"
        f" AND EXISTS (SELECT 1 FROM index.access_grants g WHERE {_HOLDER}"
        f" AND g.patient_key = {alias}.patient_key"
        f" AND (g.study_uid IS NULL OR g.study_uid = {alias}.study_uid) AND {_LIVE}))"
    )


def access_arms(actor: Actor, alias: str) -> list[tuple[str, list[object]]]:
    """`access_predicate` as disjoint conditions whose union is the same set of studies.

    A professional of a structure who holds grants sees two disjoint sets: their structure's
    studies, and the granted studies of other structures. As one ``OR`` the planner must
    collect both sets in full and sort them (a cost that grows with the structure's archive);
    as two arms, each is read in index order and a page stops after ``limit + offset`` rows
    of each. Everyone else has one arm, `access_predicate` itself.

    Placeholders are numbered from ``$1`` within each fragment.
    """
    if actor.role is RoleValues.PROFESSIONAL and actor.structure:
        return [
            (f"{alias}.structure = $1", [actor.structure]),
            (f"{alias}.structure <> $2 AND {_granted(alias)}", [actor.sub, actor.structure]),
        ]
    return [access_predicate(actor, alias)]


# Projected grant basis -> audit access basis, and which one explains an access first when a
# professional holds several grants on a patient (the ordinary one before the exceptional).
_GRANT_BASIS: Final = (
    "CASE g.basis WHEN 'care' THEN 'care_relationship' WHEN 'break_glass' THEN 'break_the_glass'"
    " WHEN 'community' THEN 'community' ELSE g.basis END"
)
_GRANT_RANK: Final = (
    "CASE g.basis WHEN 'care' THEN 0 WHEN 'community' THEN 1 WHEN 'share_code' THEN 2 ELSE 3 END"
)
#: Result columns a QIDO statement adds when it computes the basis (never rendered).
BASIS_COLUMN: Final = "__basis"
STUDY_COLUMN: Final = "__study"


def access_basis(actor: Actor, alias: str) -> tuple[str, list[object]] | None:
    """The SQL expression of why `actor` sees a study of `alias`, or None when it is uniform.

    For a professional holding grants it is NULL on the studies of their own structure (seen
    as the producing structure) and otherwise the audit basis of the grant that opens the
    study (``care_relationship``, ``community``, ``share_code``, ``break_the_glass``, in that
    order of preference), following the arms of
    `access_predicate`. For everyone else the basis is the same for every visible study (the
    gateway knows it from the role), so there is nothing to compute.

    Placeholders are numbered from ``$1`` within the fragment.
    """
    if actor.role is not RoleValues.PROFESSIONAL:
        return None
    grant = (
        f"(SELECT {_GRANT_BASIS} FROM index.access_grants g WHERE {_HOLDER}"
        f" AND g.patient_key = {alias}.patient_key"
        f" AND (g.study_uid IS NULL OR g.study_uid = {alias}.study_uid) AND {_LIVE}"
        f" ORDER BY {_GRANT_RANK} LIMIT 1)"
    )
    if actor.structure:
        return f"CASE WHEN {alias}.structure = $2 THEN NULL ELSE {grant} END", [
            actor.sub,
            actor.structure,
        ]
    return grant, [actor.sub]


async def actor_has_grants(pool: asyncpg.Pool, actor: Actor) -> bool:
    """Whether a professional holds any live grant, directly or through a community.

    Two index probes (memberships, then grants); a member of communities that hold no live
    grant keeps the fast path.
    """
    if actor.role is not RoleValues.PROFESSIONAL:
        return False
    found = await pool.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM index.access_grants g WHERE {_HOLDER} AND {_LIVE})",
        actor.sub,
    )
    return bool(found)


class GrantHolders:
    """Remembers, for `ttl` seconds, the professionals found holding a live grant.

    Saves the probe's PostgreSQL round trip on every search of a professional with grants.
    Only the positive answer is kept, and it only chooses the statement's shape: the grant
    arms check each grant's liveness themselves, so a grant revoked meanwhile opens nothing,
    and a professional's first grant is seen at their next search (a negative answer is never
    kept).
    """

    def __init__(self, ttl: float = 30.0, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._seen: dict[str, float] = {}

    async def has_grants(self, pool: asyncpg.Pool, actor: Actor) -> bool:
        """`actor_has_grants`, answered from memory while a positive answer is fresh."""
        if actor.role is not RoleValues.PROFESSIONAL:
            return False
        now = _clock.monotonic()
        seen = self._seen.get(actor.sub)
        if seen is not None and now - seen < self.ttl:
            return True
        found = await actor_has_grants(pool, actor)
        if found:
            if len(self._seen) >= self.max_size:
                self._seen.clear()  # bounded: a burst of new holders costs one probe each
            self._seen[actor.sub] = now
        else:
            self._seen.pop(actor.sub, None)
        return found


class _Params:
    """Bind parameters of the statement being built."""

    def __init__(self) -> None:
        self.values: list[object] = []

    def add(self, value: object, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{'::' + cast if cast else ''}"

    def embed(self, sql: str, values: Sequence[object]) -> str:
        """Renumber a fragment's ``$1..$n`` after the parameters already bound."""
        shift = len(self.values)
        self.values.extend(values)
        return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + shift}", sql)


def _like_pattern(value: str) -> str:
    """DICOM wildcards → a LIKE pattern, escaping LIKE's own metacharacters."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _time_bound(value: str, *, upper: bool) -> time | None:
    """The first (or last) instant a TM value covers: ``10`` spans 10:00:00 to 10:59:59.999999."""
    match = _TM_RE.match(value)
    if match is None:
        return None
    hour = int(match.group(1))
    parts = [match.group(2), match.group(3)]
    filler = 59 if upper else 0
    minute, second = (int(p) if p is not None else filler for p in parts)
    fraction = match.group(4)
    if fraction is None:
        micro = 999999 if upper else 0
    else:
        micro = int(fraction.ljust(6, "9" if upper else "0"))
    try:
        return time(hour, minute, min(second, 59), micro)  # 60 is a leap second
    except ValueError:
        return None


def _match_sql(
    match: Match, vr: str, fuzzy: bool, params: _Params, *, narrowed: bool = False
) -> str | None:
    """SQL condition for one matching key, or None when it filters nothing."""
    kind = match.kind
    if kind is MatchKindValues.EMPTY:
        return None
    if not match.values or any(not isinstance(v, str) for v in match.values):
        msg = f"{match.keyword} has no value to match"
        raise ValidationError(msg, field=match.keyword)
    expr = ATTRIBUTES[match.keyword].expr
    if expr is None:  # pragma: no cover - every matching key has a column (tested)
        msg = f"{match.keyword} cannot be matched"
        raise ValidationError(msg, field=match.keyword)
    if vr == "PN":
        return _pn_sql(match, fuzzy, params, narrowed=narrowed and match.keyword == "PatientName")
    if vr in ("DA", "TM"):
        return _range_sql(expr, vr, match, params)
    if vr in ("IS", "UI") and kind is MatchKindValues.WILDCARD:
        msg = f"{match.keyword} does not support wildcard matching"
        raise ValidationError(msg, field=match.keyword)
    if match.keyword == "ModalitiesInStudy":
        if kind is MatchKindValues.WILDCARD:
            pattern = params.add(_like_pattern(match.values[0]))
            return f"EXISTS (SELECT 1 FROM unnest({expr}) AS m(v) WHERE m.v LIKE {pattern})"
        operator = "&&" if kind is MatchKindValues.LIST else "@>"
        return f"{expr} {operator} {params.add(list(match.values), 'text[]')}"
    if kind is MatchKindValues.LIST:
        return f"{expr} = ANY({params.add(list(match.values), 'text[]')})"
    if kind is MatchKindValues.WILDCARD:
        return f"{expr} LIKE {params.add(_like_pattern(match.values[0]))}"
    if vr == "IS":
        try:
            number = int(match.values[0])
        except ValueError:
            msg = f"{match.keyword} must be an integer"
            raise ValidationError(msg, field=match.keyword) from None
        if abs(number) > _INT4_MAX:
            return "FALSE"
        return f"{expr} = {params.add(number, 'integer')}"
    return f"{expr} = {params.add(match.values[0])}"


def _range_sql(expr: str, vr: str, match: Match, params: _Params) -> str | None:
    """DA/TM single value or range; a TM covers the whole precision it names."""
    if match.kind is MatchKindValues.SINGLE:
        start = end = match.values[0]
    elif match.kind is MatchKindValues.RANGE and len(match.values) == 2:
        start, end = match.values
    else:
        msg = f"{match.keyword} does not support {match.kind.value} matching"
        raise ValidationError(msg, field=match.keyword)
    low: date | time | None
    high: date | time | None
    if vr == "DA":
        low, high = parse_da(start), parse_da(end)
        cast = "date"
    else:
        low = _time_bound(start, upper=False) if start else None
        high = _time_bound(end, upper=True) if end else None
        cast = "time"
    if (start and low is None) or (end and high is None):
        msg = f"{match.keyword} has an invalid value"
        raise ValidationError(msg, field=match.keyword)
    if vr == "DA" and match.kind is MatchKindValues.SINGLE:
        return f"{expr} = {params.add(low, cast)}"
    conditions = []
    if low is not None:
        conditions.append(f"{expr} >= {params.add(low, cast)}")
    if high is not None:
        conditions.append(f"{expr} <= {params.add(high, cast)}")
    return " AND ".join(conditions) or None


def _fuzzy_words(value: str) -> list[str]:
    """The words of a fuzzy PN value, normalised as the stored names are."""
    return re.findall(r"\w+", normalise_pn(value.replace("*", " ").replace("?", " ")) or "")


def _name_prefixes(query: QidoQuery) -> list[str]:
    """The keys of studies_name_keys_idx a fuzzy PatientName search needs (none: no index)."""
    if not query.fuzzy:
        return []
    words = [
        w
        for m in query.matches
        if m.keyword == "PatientName" and m.values
        for w in _fuzzy_words(m.values[0])
    ]
    return sorted({w[:_PREFIX_MAX] for w in words if len(w) >= _PREFIX_MIN})


def _name_scope(actor: Actor, arm: int, arms: int, *, grants: bool) -> str | None:
    """Which keys of studies_name_keys_idx narrow access arm `arm` of `arms`.

    ``""``: the region-wide keys (an admin sees every structure); a FINESS: that structure's
    own keys (the arm is ``structure = FINESS``); None: no key narrows it (a patient's or a
    professional's grants: a few hundred studies, read through their own index).
    """
    if actor.role is RoleValues.ADMIN:
        return ""
    if not actor.structure:
        return None
    if actor.role is RoleValues.PRODUCER:
        return actor.structure
    if actor.role is RoleValues.PROFESSIONAL and (arm == 0 if arms == 2 else not grants):
        return actor.structure
    return None


def _name_keys_sql(scope: str | None, prefixes: list[str], params: _Params) -> list[str]:
    if scope is None or not prefixes:
        return []
    keys = [f"{scope}:{p}" for p in prefixes] if scope else prefixes
    return [f"{_NAME_KEYS} @> {params.add(keys, 'text[]')}"]


def _pn_sql(match: Match, fuzzy: bool, params: _Params, *, narrowed: bool) -> str | None:
    column = _PN_SEARCH[match.keyword]
    value = match.values[0] if match.values else ""
    if fuzzy:
        words = _fuzzy_words(value)
        # A word must start the name, or follow a component (^) or word (space) separator.
        test = "regexp_like({}, {})" if narrowed else "{} ~ {}"
        return (
            " AND ".join(
                test.format(column, params.add("(^|[ ^])" + re.escape(word))) for word in words
            )
            or None
        )
    if match.kind is MatchKindValues.WILDCARD:
        pattern = normalise_pn(value, keep_wildcards=True)
        if pattern is None or not pattern.strip("*"):
            return None
        return f"{column} LIKE {params.add(_like_pattern(pattern))}"
    normalised = normalise_pn(value)
    if normalised is None:
        return None
    return f"{column} = {params.add(normalised)}"


def build_qido_sql(request: QidoRequest, *, grants: bool = False) -> tuple[str, list[object]]:
    """Build the statement answering `request` (its page plus one row, to tell `has_more`).

    `grants` says whether the caller may hold access grants (`actor_has_grants`); without
    them the access condition is the structure's alone (never more than the full rule). With
    them, each row also carries the study's access basis (`access_basis`) in the unrendered
    columns ``__basis`` and ``__study``.

    Returns:
        The SQL text and its bind parameters.

    Raises:
        ValidationError: the query names an attribute or a matching kind the index does not
            support at that level (the gateway's parser normally refused it already).
    """
    query = request.query
    level = query.level
    params = _Params()
    allowed = matching_keys(level)
    keys = return_keys(query)
    select = ", ".join(
        f'{ATTRIBUTES[k].expr} AS "{k}"' for k in keys if ATTRIBUTES[k].expr is not None
    )
    if level is QidoLevelValues.STUDY:
        source = "index.studies st"
        order = _STUDY_ORDER
    elif level is QidoLevelValues.SERIES:
        source = "index.series se JOIN index.studies st ON st.study_uid = se.study_uid"
        order = _SERIES_ORDER if query.study_uid else f"{_STUDY_ORDER}, {_SERIES_ORDER}"
    else:
        source = (
            "index.instances i JOIN index.series se ON se.series_uid = i.series_uid"
            " JOIN index.studies st ON st.study_uid = se.study_uid"
        )
        if query.series_uid:
            order = _INSTANCE_ORDER
        elif query.study_uid:
            order = f"{_SERIES_ORDER}, {_INSTANCE_ORDER}"
        else:
            order = f"{_STUDY_ORDER}, {_SERIES_ORDER}, {_INSTANCE_ORDER}"

    arms = (
        access_arms(request.actor, "st")
        if grants and level is QidoLevelValues.STUDY
        else [access_predicate(request.actor, "st", grants=grants)]
    )
    access = [params.embed(*arm) for arm in arms]
    prefixes = _name_prefixes(query)
    scopes = [
        _name_scope(request.actor, n, len(arms), grants=grants) if prefixes else None
        for n in range(len(arms))
    ]
    # Behind the name keys the per-word expressions only recheck the rows found: written as
    # regexp_like, which the trigram index cannot serve, so the planner does not add a
    # trigram scan of common short words (the cost the keys index exists to avoid).
    narrowed = any(scope is not None for scope in scopes)
    conditions: list[str] = []
    if query.study_uid is not None:
        # On the table whose index drives the plan (series_study_idx for series/instances).
        column = "st.study_uid" if level is QidoLevelValues.STUDY else "se.study_uid"
        conditions.append(f"{column} = {params.add(query.study_uid)}")
    if query.series_uid is not None:
        conditions.append(f"i.series_uid = {params.add(query.series_uid)}")
    for match in query.matches:
        vr = allowed.get(match.keyword)
        if vr is None:
            msg = f"{match.keyword} is not a matching key for a {level.value} search"
            raise ValidationError(msg, field=match.keyword)
        condition = _match_sql(match, vr, query.fuzzy, params, narrowed=narrowed)
        if condition:
            conditions.append(condition)

    if grants:
        # Why each study is visible (structure or which grant), for the audit; one indexed
        # probe per returned row only, after the page is cut.
        basis = access_basis(request.actor, "st")
        if basis is not None:
            select += (
                f', {params.embed(*basis)} AS "{BASIS_COLUMN}", st.study_uid AS "{STUDY_COLUMN}"'
            )

    limit = max(0, min(query.limit, MAX_LIMIT))
    offset = max(0, query.offset)
    arm_keys = [_name_keys_sql(scope, prefixes, params) for scope in scopes]
    if len(access) == 1:
        where = " AND ".join([access[0], *arm_keys[0], *conditions])
        body = f"FROM {source} WHERE {where}"
        if arm_keys[0] and level is QidoLevelValues.STUDY:
            # The rows the keys find, then their order: behind the fence (OFFSET 0) the page's
            # ORDER BY ... LIMIT cannot tempt the planner into walking the whole archive in
            # date order with the (unestimated) regexp_like filter, seconds for a rare name.
            body = f"FROM (SELECT st.* {body} OFFSET 0) st"
    else:
        # Each disjoint arm is read in its own index order and cut at the deepest row the
        # page can need; the page is then taken from their union (see access_arms).
        depth = params.add(limit + 1 + offset)
        branches = [
            f"(SELECT st.* FROM index.studies st WHERE "
            f"{' AND '.join([arm, *keys, *conditions])} ORDER BY {order} LIMIT {depth})"
            for arm, keys in zip(access, arm_keys, strict=True)
        ]
        body = f"FROM ({' UNION ALL '.join(branches)}) st"
    sql = (
        f"SELECT {select} {body} ORDER BY {order}"
        f" LIMIT {params.add(limit + 1)} OFFSET {params.add(offset)}"
    )
    return sql, params.values


async def run_qido(
    pool: asyncpg.Pool, request: QidoRequest, holders: GrantHolders | None = None
) -> QidoResponse:
    """Answer a QIDO-RS request with one SQL statement.

    Results the actor may not see are filtered inside the statement: a study, series or
    instance they cannot see gives the same empty answer as one that does not exist.

    Returns:
        200 with the DICOM JSON array (possibly empty); 400 when the query cannot be run;
        503 when the statement hit the server's statement timeout.
    """
    try:
        if holders is not None:
            grants = await holders.has_grants(pool, request.actor)
        else:
            grants = await actor_has_grants(pool, request.actor)
        sql, params = build_qido_sql(request, grants=grants)
    except ValidationError as exc:
        return QidoResponse(status=400, reason=exc.reason)
    try:
        rows = await pool.fetch(sql, *params)
    except asyncpg.QueryCanceledError:
        return QidoResponse(status=503, reason="the search took too long; narrow it down")
    limit = max(0, min(request.query.limit, MAX_LIMIT))
    page = rows[:limit]
    body = render_results(request.query, page, base_url=request.base_url)
    access: dict[str, str] = {}
    if grants:
        for row in page:
            basis = row.get(BASIS_COLUMN)
            if basis is not None:
                access[row[STUDY_COLUMN]] = basis
    return QidoResponse(
        status=200, body=body, count=len(page), has_more=len(rows) > limit, access=access
    )

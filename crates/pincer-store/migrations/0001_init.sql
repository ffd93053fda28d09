-- 0001_init: the initial pincer schema.
--
-- Conventions (see README.md in this folder): timestamps are INTEGER ms since the Unix epoch;
-- platform ids and session keys are TEXT compared with the default BINARY collation, so case is
-- preserved and significant; enum-like TEXT columns have no CHECK constraint (adding a value
-- later would need a table rebuild), the Rust decoder rejects unknown values instead.

-- One row per session key. The delivery target columns hold the last route exactly as given.
-- next_seq is the seq the next transcript row gets; message_count is next_seq - 1 because the
-- transcript is append-only and a reset clears it whole.
CREATE TABLE sessions (
    key             TEXT PRIMARY KEY NOT NULL,
    agent_id        TEXT NOT NULL,
    chat_kind       TEXT NOT NULL,
    channel         TEXT NOT NULL,
    account         TEXT NOT NULL,
    to_id           TEXT NOT NULL,
    thread_id       TEXT,
    reply_to_id     TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_run_at     INTEGER,
    last_message_at INTEGER,
    generation      INTEGER NOT NULL DEFAULT 0,
    next_seq        INTEGER NOT NULL DEFAULT 1
) WITHOUT ROWID;

-- Append-only transcript. A rowid table (not WITHOUT ROWID) because texts can be large.
CREATE TABLE transcript (
    id          INTEGER PRIMARY KEY,
    session_key TEXT NOT NULL REFERENCES sessions(key) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    role        TEXT NOT NULL,
    text        TEXT NOT NULL,
    run_id      TEXT,
    created_at  INTEGER NOT NULL,
    meta        TEXT,
    UNIQUE (session_key, seq)
);

-- Inbound dedupe ledger: a platform message id is accepted once per TTL window.
CREATE TABLE dedupe (
    channel    TEXT NOT NULL,
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seen_at    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (channel, account, message_id)
) WITHOUT ROWID;
CREATE INDEX dedupe_expires ON dedupe(expires_at);

-- Inbound outcome ledger: every accepted inbound message ends in exactly one outcome
-- (replied | silent | failed); outcome IS NULL means still in progress.
-- Ids (here and in outbox) are plain rowids, not AUTOINCREMENT: SQLite assigns max(id) + 1,
-- so ids grow with insertion order, and pruning always keeps the newest row so an id is never
-- handed out twice. AUTOINCREMENT would add a sqlite_sequence write to every insert.
CREATE TABLE inbound (
    id          INTEGER PRIMARY KEY,
    channel     TEXT NOT NULL,
    account     TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    session_key TEXT,
    received_at INTEGER NOT NULL,
    outcome     TEXT,
    reason      TEXT,
    finished_at INTEGER,
    -- The turn payload, so a message accepted before a crash can be resumed (turns.rs).
    agent_id    TEXT,
    run_id      TEXT,
    text        TEXT,
    target      TEXT,     -- JSON DeliveryTarget, NULL for session-only turns (web chat, API)
    user_seq    INTEGER   -- transcript seq of the user entry
);
CREATE INDEX inbound_unfinished ON inbound(id) WHERE outcome IS NULL;

-- Durable outbox. status: pending | sending | sent | failed | unknown.
-- "Open" rows (closed_at IS NULL: pending or sending) of one order_key are delivered strictly
-- in id order; is_head marks the lowest open row of each order_key, the only one claim_due may
-- pick. closed_at (not status) defines openness so that a claim, which only changes status,
-- leaves the outbox_open index alone.
-- inbound_id is a plain reference (no foreign key): ledger rows may be pruned before the
-- outbox rows that answer them.
-- Index budget: every index here is written on the per-message hot path, so there is no
-- general status index; listing and counting by status scan the (pruned) table.
CREATE TABLE outbox (
    id                  INTEGER PRIMARY KEY,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    session_key         TEXT,
    inbound_id          INTEGER,
    run_id              TEXT,
    channel             TEXT NOT NULL,
    account             TEXT NOT NULL,
    to_id               TEXT NOT NULL,
    thread_id           TEXT,
    reply_to_id         TEXT,
    text                TEXT NOT NULL,
    idempotency_key     TEXT,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    last_error          TEXT,
    platform_message_id TEXT,
    sent_at             INTEGER,
    closed_at           INTEGER,
    order_key           TEXT NOT NULL,
    is_head             INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX outbox_idempotency ON outbox(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX outbox_open ON outbox(order_key, id) WHERE closed_at IS NULL;
CREATE INDEX outbox_due ON outbox(next_attempt_at, id) WHERE status = 'pending' AND is_head = 1;

-- Threads the bot has replied in (the "thread participation" mention fact).
CREATE TABLE thread_participation (
    channel       TEXT NOT NULL,
    account       TEXT NOT NULL,
    chat_id       TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    last_reply_at INTEGER NOT NULL,
    PRIMARY KEY (channel, account, chat_id, thread_id)
) WITHOUT ROWID;

-- Small gateway facts (generated values and the like).
CREATE TABLE kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

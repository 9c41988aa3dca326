-- One schema for SQLite and PostgreSQL: only TEXT and BIGINT columns, times as Unix
-- milliseconds, ids as random text, so the same statements run on both.

-- A browser's session. `id` is the SHA-256 of the cookie's token: a copy of the database does
-- not hand out working cookies.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- Character Cards a session imported; shipped personas live in datasets/personas.
CREATE TABLE personas (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    persona TEXT NOT NULL,
    title TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversations_by_session ON conversations(session_id, updated_at);

-- Messages in order (`seq`); an assistant slot may hold several alternatives (regenerated
-- replies), of which one is active. `state` is the pipeline's state after an assistant message
-- (JSON): the next turn starts from the active one's, a regeneration from the one before.
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    alternative BIGINT NOT NULL,
    active BIGINT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    state TEXT,
    trace TEXT,
    idempotency_key TEXT,
    utc_offset_min BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (conversation_id, seq, alternative),
    UNIQUE (conversation_id, idempotency_key)
);

-- The generation queue. A job is claimed by one worker for a lease that its heartbeat extends;
-- a job whose lease ran out (its process died) is claimed again. `partial` is the reply so far,
-- for readers on other processes.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    claimed_by TEXT,
    lease_until BIGINT,
    attempts BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    partial TEXT NOT NULL,
    reply_message_id TEXT,
    error TEXT
);
CREATE INDEX jobs_by_status ON jobs(status, enqueued_at);
-- At most one unfinished job per conversation: turns are answered in order, and a second
-- message while a reply is being written is refused rather than queued behind it.
CREATE UNIQUE INDEX jobs_one_open_per_conversation ON jobs(conversation_id) WHERE status IN ('queued', 'running');

-- The front door (issue 40): what a public server needs to stay up under abuse.

-- Who queued a job: the client's network address (or what a trusted proxy says it is). The queue
-- is bounded per client and served round-robin across clients by this column.
-- `turn` is the job's place in the round-robin: one more than its client's previous unfinished
-- job, and never behind the turn of the job claimed last, so a client that queues four jobs at
-- once gets turns n..n+3 while a newcomer gets n. Workers take the lowest turn first.
ALTER TABLE jobs ADD COLUMN client TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN turn BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_by_client ON jobs(client, status, turn);
CREATE INDEX jobs_by_turn ON jobs(turn);

-- Rate limits shared by every process on one database: one "theoretical arrival time" per key
-- (the generic cell rate algorithm), in Unix ms. Rows whose time has passed are swept.
CREATE TABLE rate_limits (
    key TEXT PRIMARY KEY,
    tat BIGINT NOT NULL
);

-- Secrets every process of one deployment shares: the key that signs session cookies, so that a
-- session can exist (and pass its CSRF check) before its row is written.
CREATE TABLE server_keys (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Expiry finds idle sessions by when they were last seen.
CREATE INDEX sessions_by_seen ON sessions(seen_at);

-- A memory of the person (issue 34): sentences in which someone told a persona about
-- themselves, recalled in their later conversations with that persona. One row per sentence;
-- `subject` says which older row a newer one replaces ("name", "pet:cat"), NULL for facts that
-- add up. Deleting the conversation a memory came from, or the session, deletes the memory.
CREATE TABLE memories (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    persona TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT,
    content TEXT NOT NULL,
    edited BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX memories_by_person ON memories(session_id, persona, created_at);
CREATE INDEX memories_by_conversation ON memories(conversation_id);

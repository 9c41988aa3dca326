-- Practice branches (issue 39): a conversation started from an earlier moment of another, to
-- try a different message there. `branch_of` is the conversation it came from and `branch_seq`
-- the place of the learner's message it tries again. No foreign key: the original may be
-- deleted and the branch stays whole (it holds copies of the messages before that place).
ALTER TABLE conversations ADD COLUMN branch_of TEXT;
ALTER TABLE conversations ADD COLUMN branch_seq BIGINT;

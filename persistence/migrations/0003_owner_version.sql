-- Owner records carry the version Redis gave them (lua/assign_entity.lua: +1 per change), so
-- Postgres keeps the newest owner by version, whatever order the flusher delivers events in,
-- and a record restored into Redis after a loss resumes from the same version (issue #10).
ALTER TABLE entity_owners ADD COLUMN version bigint NOT NULL DEFAULT 0;

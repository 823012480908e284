-- 0006_bucket_layout (issue #12): the deployment's bucket count, recorded once.
-- Every user key and bucket stream carries the hash tag {bN} of crc32(id) % count, so the count
-- is a fact of the deployment, not only a setting: a start whose COUNTERS_KEY_BUCKETS disagrees
-- with this row refuses to run (counters/runtime/layout.py) instead of re-hashing every user.
CREATE TABLE bucket_layout (
    id           boolean     PRIMARY KEY DEFAULT true CHECK (id),   -- one row at most
    key_buckets  integer     NOT NULL CHECK (key_buckets BETWEEN 1 AND 16384),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

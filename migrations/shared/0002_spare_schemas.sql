-- Org schemas made ahead of time: creating an org renames one instead of running every
-- tenant migration while the user waits. `version` is the tenant version it holds.
CREATE TABLE schema_spares (
    name       text PRIMARY KEY CHECK (name ~ '^kodel_spare_[0-9a-f]{32}$'),
    version    integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Agents on real repositories: where a module's pull requests go, structured artifact
-- data (a review's findings, a test report's counts), pull-request artifacts, and the
-- disk an agent's workspaces take.

ALTER TABLE modules ADD COLUMN forge text CHECK (forge IN ('github', 'gitlab'));
ALTER TABLE modules ADD COLUMN forge_api_url text;

ALTER TABLE artifacts ADD COLUMN data jsonb;
ALTER TABLE artifacts DROP CONSTRAINT artifacts_kind_check;
ALTER TABLE artifacts ADD CONSTRAINT artifacts_kind_check
    CHECK (kind IN ('patch', 'branch', 'review', 'test_report', 'pull_request', 'text'));

ALTER TABLE agents ADD COLUMN disk_bytes bigint;

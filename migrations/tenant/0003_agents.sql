-- Agent workers: which enrollment token each agent connected with, the job it runs,
-- the steps it reported, and the labels a job needs of its agent.

ALTER TABLE agents ADD COLUMN token_id uuid;
ALTER TABLE agents ADD COLUMN current_job uuid;
CREATE INDEX agents_token ON agents (token_id);

-- Agent labels a project's jobs need (all of them), e.g. {linux, rust}.
ALTER TABLE instance_templates ADD COLUMN labels text[] NOT NULL DEFAULT '{}';
ALTER TABLE ai_jobs ADD COLUMN labels text[] NOT NULL DEFAULT '{}';

-- One row per reported step; (job_id, seq) makes a re-sent step a no-op.
CREATE TABLE job_steps (
    job_id     uuid NOT NULL REFERENCES ai_jobs (id) ON DELETE CASCADE,
    seq        integer NOT NULL CHECK (seq >= 0),
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    step       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- Provider keys of the org's own (sealed with the server's key), used before the
-- server's environment keys.
CREATE TABLE llm_providers (
    provider   text PRIMARY KEY CHECK (provider IN ('openai', 'anthropic', 'openrouter', 'ollama')),
    base_url   text,
    api_key    bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

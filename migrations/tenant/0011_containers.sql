-- Jobs run in a container when their instance template names a base image; a template
-- without one runs its jobs under bubblewrap on the agent's host.
ALTER TABLE instance_templates ALTER COLUMN base_image DROP NOT NULL;
UPDATE instance_templates SET base_image = NULL WHERE btrim(base_image) = '';

-- What an agent can run (a container, docker-in-docker) and, for what it cannot, why.
ALTER TABLE agents ADD COLUMN capabilities text[] NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN missing jsonb NOT NULL DEFAULT '{}';

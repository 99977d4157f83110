-- The web view's sign-ins are sessions like a CLI login's: the browser holds a random
-- cookie token of which only the SHA-256 is kept; logging out (or revoking the
-- session) ends it, and it ends by itself at web_expires_at.
ALTER TABLE sessions ADD COLUMN web_token_hash bytea UNIQUE;
ALTER TABLE sessions ADD COLUMN web_expires_at timestamptz;

-- Single sign-on: a person at an OpenID provider is (issuer, subject), linked to one
-- Kodel user.
-- (issuer, subject) -> user_id since 0001.
ALTER TABLE oidc_identities ADD COLUMN email text;
ALTER TABLE oidc_identities ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE oidc_identities ADD COLUMN last_login_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX oidc_identities_user ON oidc_identities (user_id);

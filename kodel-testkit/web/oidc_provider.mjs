// A real OpenID provider for the SSO tests: npm's oidc-provider (panva), on
// 127.0.0.1:PORT, with one confidential client ("kodel") and one user ("pat", any
// password, through the provider's own development login and consent pages). The
// authorization code flow (PKCE) and the device flow are on.
//
// Test-only extra: POST /test/sign signs the JSON body's claims with the provider's own
// key, so a test can make ID tokens that must be refused (expired, wrong audience...).
//
// Env: PORT, ISSUER, REDIRECT (Kodel's callback), EMAIL, EMAIL_VERIFIED, ORGS, KODEL_NODE_MODULES.
import http from 'node:http';
import { pathToFileURL } from 'node:url';

const M = process.env.KODEL_NODE_MODULES;
const { default: Provider } = await import(pathToFileURL(`${M}/oidc-provider/lib/index.js`));
const jose = await import(pathToFileURL(`${M}/jose/dist/webapi/index.js`));
const { PORT, ISSUER, REDIRECT, EMAIL } = process.env;
const VERIFIED = process.env.EMAIL_VERIFIED === 'true';
const ORGS = (process.env.ORGS || '').split(',').filter(Boolean);

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
// A new key (and key id) at every start.
const kid = `key-${Date.now()}-${Math.random().toString(36).slice(2)}`;
const jwk = { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: 'kodel',
    client_secret: 'kodel-client-secret-for-tests',
    redirect_uris: [REDIRECT],
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  features: { devInteractions: { enabled: true }, deviceFlow: { enabled: true } },
  claims: { openid: ['sub', 'kodel_orgs'], email: ['email', 'email_verified'], profile: ['name'] },
  // Put the user's claims in the ID token itself (Kodel reads them there).
  conformIdTokenClaims: false,
  cookies: { keys: ['a-test-cookie-key'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: `subject-of-${id}`, email: EMAIL, email_verified: VERIFIED, name: 'Pat Example', kodel_orgs: ORGS }),
  }),
});
provider.proxy = false;

const callback = provider.callback();
http.createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/test/sign') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const token = await new jose.SignJWT(JSON.parse(body)).setProtectedHeader({ alg: 'RS256', kid }).sign(privateKey);
    res.writeHead(200, { 'content-type': 'text/plain' }).end(token);
    return;
  }
  callback(req, res);
}).listen(Number(PORT), '127.0.0.1', () => console.log('ready'));

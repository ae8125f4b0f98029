// A real, independent OpenID Connect provider for the `type: oidc` connector's black-box tests:
// node's certified `oidc-provider` (installed by `scripts/test-tools oidc-provider`), over HTTPS
// with the test's CA, on a free loopback port.
//
//   node server.mjs MODULES_DIR CERT KEY CLIENT_SECRET
//
// Prints `issuer: https://127.0.0.1:PORT` once it listens; it serves once the test has told it
// tessera's callback (`POST /test/client?redirect_uri=URI`: tessera's port is known only after
// tessera starts with this issuer in its configuration). One client, `tessera` (confidential,
// client_secret_basic, RS256 id_tokens, codes with PKCE, rotating refresh tokens issued whether
// or not the request says prompt=consent). People sign in without a browser: the interaction
// pages finish at once as the account `/test/next` named (alice by default), or refuse with
// `access_denied`. Test hooks, for the test only:
//   POST /test/client?redirect_uri=URI   registers tessera's callback and starts serving
//   POST /test/next?account=NAME     the next sign-ins are NAME's
//   POST /test/next?deny=1           the next sign-in is refused (access_denied)
//   POST /test/tamper?with=aud|nonce|none|drop   the next token answer's id_token is re-signed
//                                    with a wrong audience or nonce, sent unsigned (alg none), or
//                                    left out (as providers may in a refresh's answer)
//   POST /test/stall                 the next token request gets no answer for 30 s
//   POST /test/revoke?account=NAME   ends every grant of NAME: their refresh tokens die
import { generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [modules, certFile, keyFile, clientSecret] = process.argv.slice(2);
const { default: Provider } = await import(
  pathToFileURL(join(modules, 'node_modules', 'oidc-provider', 'lib', 'index.js')).href
);

const ACCOUNTS = {
  alice: { name: 'Alice Liddell', email: 'alice@corp.example', groups: ['k8s-dev', 'staff', 'Okta Admins'] },
  bob: { name: 'Bob Builder', email: 'bob@corp.example', groups: ['k8s-ops'] },
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'upstream-rs256', use: 'sig', alg: 'RS256' };

let nextAccount = 'alice';
let denyNext = false;
let tamperNext = null;
let stallNext = false;
const grantsOf = new Map();

let provider = null;
let callback = null;
const server = https.createServer(
  { cert: readFileSync(certFile), key: readFileSync(keyFile) },
  (req, res) => handle(req, res),
);
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

// Starts the provider, with tessera's callback as the client's one redirect URI.
function start(redirectUri) {
  provider = new Provider(issuer, {
    clients: [{
      client_id: 'tessera',
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    }],
    jwks: { keys: [signingJwk] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    conformIdTokenClaims: false,
    // The subject is the account id, `NAME-0001`: not the name people type.
    findAccount: async (_ctx, id) => {
      const name = id.replace(/-0001$/, '');
      const account = ACCOUNTS[name];
      if (!account) return undefined;
      return {
        accountId: id,
        claims: async () => ({ sub: id, preferred_username: name, ...account }),
      };
    },
    features: { devInteractions: { enabled: false }, revocation: { enabled: true } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: true,
    pkce: { required: () => true },
    cookies: { keys: ['a test cookie key that is long enough'] },
  });

  // The test's `/test/tamper`: re-signs the id_token of the next token answer, wrong.
  provider.use(async (ctx, next) => {
    if (ctx.path === '/token' && stallNext) {
      stallNext = false;
      await new Promise((resolve) => { setTimeout(resolve, 30000); });
    }
    await next();
    if (ctx.path !== '/token' || !tamperNext || !ctx.body?.id_token) return;
    const how = tamperNext;
    tamperNext = null;
    if (how === 'drop') {
      const { id_token: _dropped, ...rest } = ctx.body;
      ctx.body = rest;
      return;
    }
    const [, payload] = ctx.body.id_token.split('.');
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
    if (how === 'aud') claims.aud = 'someone-else';
    if (how === 'nonce') claims.nonce = 'not-the-nonce-of-this-login';
    const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
    if (how === 'none') {
      ctx.body = { ...ctx.body, id_token: `${b64({ alg: 'none', typ: 'JWT', kid: signingJwk.kid })}.${b64(claims)}.` };
      return;
    }
    const input = `${b64({ alg: 'RS256', typ: 'JWT', kid: signingJwk.kid })}.${b64(claims)}`;
    const signature = sign('sha256', Buffer.from(input), privateKey).toString('base64url');
    ctx.body = { ...ctx.body, id_token: `${input}.${signature}` };
  });
  callback = provider.callback();
}

// Sign-in and consent without a person: the account named by /test/next, all scopes granted.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  let result;
  if (denyNext) {
    denyNext = false;
    result = { error: 'access_denied', error_description: 'the test refused this sign-in' };
  } else if (prompt.name === 'login') {
    result = { login: { accountId: `${nextAccount}-0001` } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    const ids = grantsOf.get(session.accountId) ?? [];
    grantsOf.set(session.accountId, [...ids, grantId]);
    result = { consent: { grantId } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function testHook(req, res, url) {
  const q = url.searchParams;
  if (url.pathname === '/test/client') {
    start(q.get('redirect_uri'));
  } else if (!provider) {
    res.writeHead(503);
    res.end();
    return;
  } else if (url.pathname === '/test/next') {
    if (q.get('account')) nextAccount = q.get('account');
    if (q.get('deny')) denyNext = true;
  } else if (url.pathname === '/test/stall') {
    stallNext = true;
  } else if (url.pathname === '/test/tamper') {
    tamperNext = q.get('with');
  } else if (url.pathname === '/test/revoke') {
    const accountId = `${q.get('account')}-0001`;
    for (const id of grantsOf.get(accountId) ?? []) {
      const grant = await provider.Grant.find(id);
      if (grant) await grant.destroy();
    }
    grantsOf.delete(accountId);
  } else {
    res.writeHead(404);
    res.end();
    return;
  }
  res.writeHead(204);
  res.end();
}

function handle(req, res) {
  const url = new URL(req.url, issuer);
  const fail = (e) => {
    console.error(e);
    res.writeHead(500);
    res.end(String(e));
  };
  if (url.pathname.startsWith('/interaction/') && provider) {
    interaction(req, res).catch(fail);
  } else if (url.pathname.startsWith('/test/') && req.method === 'POST') {
    testHook(req, res, url).catch(fail);
  } else if (callback) {
    callback(req, res);
  } else {
    res.writeHead(503);
    res.end();
  }
}
console.log(`issuer: ${issuer}`);

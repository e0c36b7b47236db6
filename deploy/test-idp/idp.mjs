// Integration tests only: an organisation's OpenID provider, played by panva's certified
// oidc-provider, with one confidential client (`bastion`, our auth service) and two users.
// Never run this anywhere else: the users, their passwords and the /_test/ control API are
// fixtures, and every key is generated at start and kept in memory only.
//
// Environment:
//   IDP_ISSUER         e.g. http://idp.bastion.test:18005 (the same URL for the host's browser
//                      and for the auth container, so it listens on the issuer's port)
//   IDP_CLIENT_SECRET  the `bastion` client's secret (at least 32 characters)
//   IDP_REDIRECT_URIS  space-separated redirect URIs of the `bastion` client
//   IDP_ROTATE_REFRESH_TOKENS  "true" (default): every refresh returns a new refresh token
//                      and the used one is spent; "false": the refresh token stays the same
import crypto from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`test-idp: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const ISSUER = required('IDP_ISSUER').replace(/\/+$/, '');
const CLIENT_SECRET = required('IDP_CLIENT_SECRET');
const REDIRECT_URIS = required('IDP_REDIRECT_URIS').split(/\s+/).filter(Boolean);
const ROTATE = (process.env.IDP_ROTATE_REFRESH_TOKENS ?? 'true') !== 'false';
const PORT = Number(new URL(ISSUER).port || 80);
const CLIENT_ID = 'bastion';
if (CLIENT_SECRET.length < 32) {
  console.error('test-idp: IDP_CLIENT_SECRET must be at least 32 characters');
  process.exit(2);
}

// --- the organisation's people ------------------------------------------------------------
// `sub` is a fixed opaque id per person (not the username), as at a real IdP.
const INITIAL_USERS = {
  alice: {
    password: 'alice-pass-1',
    claims: {
      sub: '0b6f5f0e-8d5c-4a57-9d3e-a11ce0000001',
      name: 'Alice Example',
      preferred_username: 'alice',
      email: 'alice@example.org',
      email_verified: true,
      groups: ['engineering', 'premium-users'],
    },
  },
  bob: {
    password: 'bob-pass-1',
    claims: {
      sub: '6c2d9a41-3f7e-4b1a-8e22-b0b000000002',
      preferred_username: 'bob',
      email: 'bob@corp.example',
      email_verified: false,
      groups: ['staff'],
    },
  },
};
let users = structuredClone(INITIAL_USERS);

const userBySub = (sub) => Object.values(users).find((u) => u.claims.sub === sub);

function digest(value) {
  return crypto.createHash('sha256').update(String(value)).digest();
}

function checkPassword(username, password) {
  const user = Object.hasOwn(users, username) ? users[username] : undefined;
  // Compare digests in constant time, also for unknown users.
  const ok = crypto.timingSafeEqual(digest(user ? user.password : crypto.randomUUID()), digest(password));
  return ok && user ? user : undefined;
}

// --- the provider -------------------------------------------------------------------------
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' };

const page = (title, body) => `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;

function escape(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const configuration = {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      client_name: 'MCP Bastion',
      redirect_uris: REDIRECT_URIS,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      // client_secret_post is accepted as well (oidc-provider treats the two alike).
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
      scope: 'openid profile email groups offline_access',
    },
  ],
  responseTypes: ['code'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope claims in the ID token too (not only at userinfo), as Okta/Entra/Keycloak can do.
  conformIdTokenClaims: false,
  jwks: { keys: [signingKey] },
  cookies: {
    keys: [crypto.randomBytes(32).toString('base64url')],
    // Plain http on idp.bastion.test: no Secure flag (ctx.secure is false, proxy is off), so
    // SameSite=None (the default for the session cookie) would be dropped by browsers.
    long: { signed: true, httpOnly: true, sameSite: 'lax' },
    short: { signed: true, httpOnly: true, sameSite: 'lax' },
  },
  pkce: { methods: ['S256'], required: () => true },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = page('Sign out', `${form}<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>`);
      },
      postLogoutSuccessSource: async (ctx) => {
        ctx.body = page('Signed out', '<p>You are signed out.</p>');
      },
    },
  },
  // A refresh token for every authorization code of the `bastion` client, whether or not
  // offline_access survived (oidc-provider drops it unless prompt=consent is sent), and one
  // that outlives the IdP browser session.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: () => ROTATE,
  // `bastion` is first-party: consent is granted without asking, for whatever it requests.
  loadExistingGrant: async (ctx) => {
    const { Grant } = ctx.oidc.provider;
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    let grant = grantId ? await Grant.find(grantId) : undefined;
    if (ctx.oidc.client.clientId !== CLIENT_ID) return grant;
    grant ??= new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    // (offline_access is in here only when it survived oidc-provider's prompt=consent rule.)
    const scopes = [...ctx.oidc.requestParamOIDCScopes];
    if (scopes.length) grant.addOIDCScope(scopes.join(' '));
    if (ctx.oidc.requestParamClaims.size) grant.addOIDCClaims([...ctx.oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, sub) => {
    const user = userBySub(sub);
    if (!user) return undefined;
    return {
      accountId: sub,
      // Read at every use, so a groups change shows at the next refresh and userinfo call.
      claims: async () => structuredClone(userBySub(sub)?.claims ?? { sub }),
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  clientBasedCORS: () => false,
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p><code>${escape(out.error)}</code>: ${escape(out.error_description ?? '')}</p>`);
  },
  ttl: {
    AccessToken: 600,
    IdToken: 600,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 3600,
    Grant: 86400,
    RefreshToken: 86400,
  },
};

const provider = new Provider(ISSUER, configuration);
provider.proxy = false;
for (const event of ['server_error', 'authorization.error', 'grant.error', 'userinfo.error', 'introspection.error', 'revocation.error', 'end_session.error']) {
  provider.on(event, (ctx, err) => {
    console.log(JSON.stringify({ event, error: err.message, detail: err.error_description }));
  });
}

// --- the interaction pages (no JavaScript) ------------------------------------------------
function loginPage(uid, { login = '', error } = {}) {
  return page('Example Org account', `
${error ? `<p role="alert" class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
  <label>Username <input name="login" autocomplete="username" value="${escape(login)}" required autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${escape(uid)}/abort">
  <button type="submit">Cancel</button>
</form>`);
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(body);
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Sign-in error', '<p>Interaction mismatch.</p>'));
  const { prompt, params, session } = details;

  if (action === 'abort' && req.method === 'POST') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }

  if (prompt.name === 'login') {
    if (action === 'login' && req.method === 'POST') {
      const form = new URLSearchParams(await readBody(req));
      const login = form.get('login') ?? '';
      const user = checkPassword(login, form.get('password') ?? '');
      if (!user) return send(res, 401, loginPage(uid, { login, error: 'Invalid username or password.' }));
      return provider.interactionFinished(req, res, {
        login: { accountId: user.claims.sub },
      }, { mergeWithLastSubmission: false });
    }
    return send(res, 200, loginPage(uid));
  }

  if (prompt.name === 'consent') {
    // Only when the client forces it (prompt=consent): granted at once for first-party `bastion`.
    if (params.client_id !== CLIENT_ID) return send(res, 403, page('Sign-in error', '<p>Unknown client.</p>'));
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, {
      consent: details.grantId ? {} : { grantId },
    }, { mergeWithLastSubmission: true });
  }

  return send(res, 400, page('Sign-in error', `<p>Unsupported prompt ${escape(prompt.name)}.</p>`));
}

// --- the test-control API (no auth: test stack only) --------------------------------------
async function control(req, res, path) {
  const json = (status, value) => send(res, status, JSON.stringify(value), 'application/json');
  if (path === '/_test/reset' && req.method === 'POST') {
    users = structuredClone(INITIAL_USERS);
    return json(200, { ok: true });
  }
  const match = /^\/_test\/users\/([^/]+)(\/groups)?$/.exec(path);
  const username = match && decodeURIComponent(match[1]);
  if (!match || !Object.hasOwn(users, username)) return json(404, { error: 'not_found' });
  const user = users[username];
  if (!match[2] && req.method === 'GET') return json(200, user.claims);
  if (match[2] && req.method === 'PUT') {
    let groups;
    try {
      groups = JSON.parse(await readBody(req));
    } catch {
      return json(400, { error: 'body must be JSON' });
    }
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
      return json(400, { error: 'body must be a JSON array of strings' });
    }
    user.claims.groups = groups;
    return json(200, user.claims);
  }
  return json(405, { error: 'method_not_allowed' });
}

const providerHandler = provider.callback();
// oidc-provider builds endpoint URLs from the request's Host: pin it to the issuer's, so that
// discovery and redirects name the issuer however the server was reached (127.0.0.1 or the
// network alias), as at a real IdP behind its one public name.
const ISSUER_HOST = new URL(ISSUER).host;

const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, 'http://localhost');
  try {
    if (pathname === '/healthz') return send(res, 200, 'ok\n', 'text/plain');
    if (pathname.startsWith('/_test/')) return await control(req, res, pathname);
    const m = /^\/interaction\/([^/]+)(?:\/(login|abort))?$/.exec(pathname);
    if (m) return await interaction(req, res, m[1], m[2]);
    req.headers.host = ISSUER_HOST;
    return providerHandler(req, res);
  } catch (err) {
    console.log(JSON.stringify({ event: 'request_error', path: pathname, error: err.message }));
    if (!res.headersSent) {
      const status = err.status ?? (err.name === 'SessionNotFound' ? 400 : 500);
      send(res, status, page('Sign-in error', `<p>${escape(err.error_description || err.message)}</p>`));
    }
  }
});

server.listen(PORT, '0.0.0.0', () => {
  console.log(JSON.stringify({ event: 'listening', issuer: ISSUER, port: PORT, rotate_refresh_tokens: ROTATE }));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}

// A real OpenID Connect provider for tests/browser/test_single_sign_on.py: the certified
// `oidc-provider` package, configured as a company identity provider would be for the console.
//
// Environment (all required): OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI,
// OIDC_POST_LOGOUT_REDIRECT_URI, OIDC_ACCOUNTS (JSON: {username: {password, sub, email, name, groups}}).
//
// - Authorization code flow, client_secret_post, PKCE required (S256) for every request.
// - RP-initiated logout (end_session_endpoint) with id_token_hint and post_logout_redirect_uri.
// - Claims: email, profile (name) and a `groups` claim (scope "groups"), from userinfo.
// - A sign-in form of its own (/interaction/<uid>) checking the test accounts' passwords (Cancel
//   answers error=access_denied); consent is given by the provider itself (a first-party client).
// - Test control, for the test only: POST /__test__/accounts/<username> with JSON {"groups": [...]}
//   changes what the provider says about that account from the next sign-in on.
// Every page is self-contained (no external fonts or scripts).

import http from 'node:http';

import * as jose from 'jose';
import Provider from 'oidc-provider';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is required`);
    process.exit(2);
  }
  return value;
}

const port = Number(required('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;
const clientId = required('OIDC_CLIENT_ID');
const accounts = JSON.parse(required('OIDC_ACCOUNTS'));
const SCOPES = 'openid email profile groups';

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font:15px system-ui,sans-serif;margin:3em auto;max-width:26em}label{display:block;margin:.6em 0 .2em}
input{width:100%;padding:.4em}button{margin-top:1em;padding:.5em 1em}.error{color:#a00}</style></head>
<body><p><strong>Test identity provider</strong></p>${body}</body></html>`;
}

function accountBySub(sub) {
  return Object.values(accounts).find((account) => account.sub === sub);
}

const signingKey = await jose.generateKeyPair('RS256', { extractable: true });
const privateJwk = { ...(await jose.exportJWK(signingKey.privateKey)), kid: 'test-provider-key', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: required('OIDC_CLIENT_SECRET'),
    client_name: 'FeatureOps Console',
    redirect_uris: [required('OIDC_REDIRECT_URI')],
    post_logout_redirect_uris: [required('OIDC_POST_LOGOUT_REDIRECT_URI')],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  jwks: { keys: [privateJwk] },
  cookies: { keys: ['featureops-test-provider-cookie-key'] },
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.body = page('Sign out', `<h1>Sign out of the test identity provider?</h1>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<h1>You are signed out</h1>');
      },
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Error</h1><pre class="error">${escapeHtml(JSON.stringify(out, null, 2))}</pre>`);
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const account = accountBySub(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      // Read at each token and userinfo request: a change through /__test__/ shows at the next one.
      async claims() {
        const now = accountBySub(sub);
        return { sub, email: now.email, email_verified: true, name: now.name, groups: now.groups };
      },
    };
  },
  // The console is a first-party client: consent is given without asking.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(SCOPES);
    await grant.save();
    return grant;
  },
});

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function signInForm(uid, error = '') {
  return page('Sign in', `<h1>Sign in</h1>${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}">
<label for="username">Username</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Sign in</button> <button type="submit" name="cancel" value="1">Cancel</button></form>`);
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (details.prompt.name !== 'login') {
    // Consent comes from loadExistingGrant; any other prompt is not expected here.
    res.writeHead(400, { 'Content-Type': 'text/html' });
    res.end(page('Error', `<p class="error">Unexpected prompt ${escapeHtml(details.prompt.name)}</p>`));
    return;
  }
  if (req.method === 'GET') {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(signInForm(uid));
    return;
  }
  const form = new URLSearchParams(await readBody(req));
  if (form.get('cancel')) {
    // The person declines: the provider answers the console with error=access_denied.
    await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'The person cancelled the sign-in.' },
      { mergeWithLastSubmission: false });
    return;
  }
  const account = accounts[form.get('username') || ''];
  if (!account || account.password !== form.get('password')) {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(signInForm(uid, 'Wrong username or password.'));
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false });
}

async function control(req, res, username) {
  const account = accounts[username];
  if (req.method !== 'POST' || !account) {
    res.writeHead(404).end();
    return;
  }
  const change = JSON.parse(await readBody(req));
  if (Array.isArray(change.groups)) account.groups = change.groups.map(String);
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ username, groups: account.groups }));
}

const handler = provider.callback();
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    const interactionMatch = url.pathname.match(/^\/interaction\/([\w-]+)$/);
    if (interactionMatch) return await interaction(req, res, interactionMatch[1]);
    const controlMatch = url.pathname.match(/^\/__test__\/accounts\/([\w.@-]+)$/);
    if (controlMatch) return await control(req, res, controlMatch[1]);
    return handler(req, res);
  } catch (error) {
    console.error(error);
    if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain' });
    res.end(String(error));
  }
});
server.listen(port, '127.0.0.1', () => console.log(`listening on ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));

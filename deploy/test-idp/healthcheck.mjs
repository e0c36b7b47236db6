// Healthy when the provider serves its discovery document on the issuer's port.
import http from 'node:http';

const port = new URL(process.env.IDP_ISSUER).port || 80;
const req = http.get({ host: '127.0.0.1', port, path: '/.well-known/openid-configuration', timeout: 2000 }, (res) => {
  res.resume();
  process.exit(res.statusCode === 200 ? 0 : 1);
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => process.exit(1));

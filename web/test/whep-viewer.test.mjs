// The WHEP viewer fixture (web/test/standards/whep-viewer.mjs: whip-whep's WHEPClient in
// headless Chromium) tested on its own, before spyglass has a WHEP endpoint: against stubs that
// answer 404 or refuse the CORS preflight (the failure paths), and against a WHEP endpoint
// answered by Janus's VideoCall plugin with a Chromium camera behind it (the success path: 201,
// Location, Link, trickle PATCH, frames, DELETE). All on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fileFixture, freePort, until, videoPixels, webDir } from './harness.mjs';
import { Janus } from './standards/janus.mjs';
import { PageServer, PICTURE } from './standards/pages.mjs';
import { JanusWhepEndpoint } from './standards/whep-endpoint.mjs';
import { watchWhep } from './standards/whep-viewer.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;

async function pageServer() {
  const pages = await PageServer.start();
  cleanups.push(() => pages.close());
  return pages;
}

/**
 * An HTTP server on 127.0.0.1 that answers every request with 404; the CORS preflight
 * (OPTIONS) with 204 when `preflight`, else with 404 too.
 */
async function notFoundStub({ preflight = true } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    requests.push(req.method);
    const cors = { 'access-control-allow-origin': '*', 'access-control-allow-headers': '*', 'access-control-allow-methods': '*' };
    res.writeHead(req.method === 'OPTIONS' && preflight ? 204 : 404, cors);
    res.end(req.method === 'OPTIONS' ? '' : 'no such stream');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(async () => {
    const closed = new Promise((r) => server.close(r));
    server.closeAllConnections();
    await closed;
  });
  return { url: `http://127.0.0.1:${server.address().port}/whep`, requests };
}

const near = (got, want, tol = 60) => got.every((v, i) => Math.abs(v - want[i]) <= tol);

test('WHEP viewer: an endpoint that answers 404 is reported as a failed POST', async () => {
  const pages = await pageServer();
  const stub = await notFoundStub();
  const v = await watchWhep(fixture.browser.context, pages, { url: stub.url, timeoutMs: 5000 });
  const exchanges = await v.stop();
  assert.equal(v.ok, false);
  assert.match(v.error, /status 404/);
  assert.equal(v.framesDecoded, 0);
  assert.equal(v.firstFrameMs, null);
  const posts = exchanges.filter((x) => x.method === 'POST');
  assert.equal(posts.length, 1);
  assert.equal(posts[0].status, 404);
  assert.equal(posts[0].location, undefined);
  assert.deepEqual(stub.requests, ['OPTIONS', 'POST']);
});

test('WHEP viewer: an endpoint that refuses the CORS preflight is reported as a failed fetch', async () => {
  const pages = await pageServer();
  const stub = await notFoundStub({ preflight: false });
  const v = await watchWhep(fixture.browser.context, pages, { url: stub.url, timeoutMs: 5000 });
  await v.stop();
  assert.equal(v.ok, false);
  assert.match(v.error, /Failed to fetch/);
  const [post] = v.exchanges;
  assert.equal(post.method, 'POST');
  assert.equal(post.status, undefined);
  assert.match(post.error, /Failed to fetch/);
  assert.deepEqual(stub.requests, ['OPTIONS']);
});

test('WHEP viewer: plays a working endpoint and reports its exchanges (201, Location, Link, PATCH, DELETE)', async (t) => {
  const pages = await pageServer();
  const janus = await Janus.start({ plugins: ['videocall'] });
  cleanups.push(() => janus.close());
  // An ICE server in a Link header: a loopback port where nothing answers.
  const link = `<stun:127.0.0.1:${await freePort()}>; rel="ice-server"`;
  const endpoint = await JanusWhepEndpoint.start({
    janus, context: fixture.browser.context, pages, token: 'viewer-token', links: [link],
  });
  cleanups.push(() => endpoint.close());

  // A wrong token: 401, nothing plays.
  const refused = await watchWhep(fixture.browser.context, pages, { url: endpoint.url, token: 'wrong', timeoutMs: 5000 });
  await refused.stop();
  assert.equal(refused.ok, false);
  assert.match(refused.error, /status 401/);
  assert.equal(endpoint.viewer, null);

  const v = await watchWhep(fixture.browser.context, pages, { url: endpoint.url, token: 'viewer-token', timeoutMs: 20000 });
  assert.equal(v.ok, true, `viewer report: ${JSON.stringify({ ...v, page: undefined })}`);
  assert.ok(v.framesDecoded > 0);
  assert.deepEqual([v.videoWidth, v.videoHeight], [320, 240]);
  assert.ok(v.firstFrameMs > 0, `first frame ${v.firstFrameMs} ms after the POST`);
  t.diagnostic(`WHEP POST -> first frame (Janus VideoCall endpoint): ${v.firstFrameMs} ms`);
  // The last of the top-left 81x101 pixels is (80, 100), in the picture's left half.
  const left = (await videoPixels(v.page, 81, 101)).slice(-4, -1);
  assert.ok(near(left, PICTURE.left), `decoded colour at (80,100): ${left}`);
  await until('audio packets', async () => (await v.report()).audioPackets > 0);

  const post = v.exchanges.find((x) => x.method === 'POST');
  assert.equal(post.status, 201);
  assert.match(post.location, /^\/whep\/[0-9a-f]{16}$/);
  assert.equal(post.link, link);
  assert.match(post.etag, /^"[0-9a-f]{16}"$/);
  assert.match(post['content-type'], /^application\/sdp/);
  const exchanges = await v.stop();
  const patch = exchanges.find((x) => x.method === 'PATCH');
  assert.equal(patch?.status, 204, `a trickle PATCH: ${JSON.stringify(exchanges)}`);
  assert.equal(patch.url, new URL(post.location, endpoint.url).href);
  const del = exchanges.find((x) => x.method === 'DELETE');
  assert.equal(del?.status, 200);
  assert.equal(endpoint.viewer, null);
});

test('WHEP viewer CLI: prints the report as JSON and exits 1 when nothing plays', async () => {
  const stub = await notFoundStub();
  const { code, stdout } = await new Promise((resolve) => {
    execFile(process.execPath, [join(webDir, 'test', 'standards', 'whep-viewer.mjs'), stub.url, '--seconds', '5'],
      { cwd: webDir, timeout: 60000 }, (err, stdout) => resolve({ code: err ? err.code : 0, stdout }));
  });
  assert.equal(code, 1);
  const report = JSON.parse(stdout);
  assert.equal(report.ok, false);
  assert.equal(report.exchanges.find((x) => x.method === 'POST').status, 404);
});

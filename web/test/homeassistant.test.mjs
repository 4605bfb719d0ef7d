// spyglass's Home Assistant MQTT discovery (--homeassistant) against a real Mosquitto, judged by
// the tests' checker of Home Assistant's documented schema (web/test/standards/ha-discovery.mjs),
// the snapshots decoded with djpeg and read back with the test pattern's frame code; snapshots
// on request (as the discovered button sends them), from the shared pipeline; removal with
// `spyglass homeassistant --remove`; and nothing at all while it is off. All on 127.0.0.1.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import mqtt from 'mqtt';
import { Broker, Spyglass, fileFixture, spyglassBin, until, videoStats } from './harness.mjs';
import { readCodeFromGreen } from './code-reader.mjs';
import { checkBroker, collectDiscovery, decodeJpeg, fetchImage } from './standards/ha-discovery.mjs';

const fixture = fileFixture({ browser: true });
const { cleanups } = fixture;

async function start(extra) {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const daemon = await Spyglass.start(broker, { size: '320x240', id: `ha/cam-${process.pid}`, extra: ['--audio', 'none', ...extra] });
  cleanups.push(() => daemon.close());
  return { broker, daemon };
}

/** The snapshot's size and the capture time its test-pattern code carries. */
async function frameOf(jpeg) {
  const { width, height, rgb } = await decodeJpeg(jpeg);
  const rgba = Buffer.alloc(width * height * 4);
  for (let i = 0; i < width * height; i++) rgb.copy(rgba, i * 4, i * 3, i * 3 + 3);
  return { width, height, captureMs: readCodeFromGreen(rgba, width, width, height)?.captureMs ?? null };
}

/** The next image published on `topic` after `trigger` (retained deliveries skipped). */
async function freshImage(broker, topic, trigger) {
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  try {
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no new image on ${topic}`)), 15000);
      client.on('message', (_t, payload, packet) => {
        if (packet.retain) return;
        clearTimeout(timer);
        resolve(payload);
      });
    });
    await client.subscribeAsync(topic, { qos: 1 });
    await trigger();
    return await got;
  } finally {
    await client.endAsync();
  }
}

const captures = (daemon) => (daemon.log().match(/capture started/g) ?? []).length;

test('discovery: a camera with JPEG snapshots, a snapshot button and two sensors, valid for Home Assistant', async (t) => {
  const { broker, daemon } = await start(['--homeassistant', 'on']);
  const node = daemon.id.replace(/[^a-zA-Z0-9_-]/g, '_');
  const { results, errors } = await until('four discovery entries', async () => {
    const r = await checkBroker(broker.url, { waitMs: 500 });
    return r.results.length === 4 ? r : null;
  });
  assert.deepEqual(errors, []);
  assert.deepEqual(results.flatMap((r) => r.warnings), []);
  assert.ok(results.every((r) => r.retain));
  const by = Object.fromEntries(results.map((r) => [r.topic, r.config]));
  const camera = by[`homeassistant/camera/${node}/config`];
  assert.equal(camera.topic, `${daemon.id}/snapshot`);
  assert.deepEqual(camera.availability.map((a) => a.topic), [`${daemon.id}/status`]);
  assert.equal(camera.device.sw_version, '0.1.0');
  assert.equal(camera.device.configuration_url, `http://127.0.0.1:${daemon.httpPort}/?id=${encodeURIComponent(daemon.id)}`);
  assert.equal(by[`homeassistant/button/${node}/snapshot/config`].command_topic, `${daemon.id}/snapshot/request`);
  assert.equal(by[`homeassistant/sensor/${node}/viewers/config`].state_topic, `${daemon.id}/status`);
  assert.deepEqual(by[`homeassistant/sensor/${node}/video/config`].options, ['idle', 'live', 'lost']);

  // The snapshot taken at start is retained: the camera ran for it, briefly, and is idle again.
  // (It may still be on its way when the entries are read: then it comes live, and retained next.)
  const first = await until('a retained snapshot', async () => {
    const got = await fetchImage(broker.url, camera.topic, { timeoutMs: 15000 });
    return got.retain ? got : null;
  });
  const a = await frameOf(first.payload);
  assert.deepEqual([a.width, a.height], [320, 240]);
  assert.ok(Math.abs(a.captureMs - Date.now()) < 60000, `the code reads back from the JPEG: ${a.captureMs}`);
  await until('capture stopped after the snapshot', () => /capture stopped/.test(daemon.log()));
  assert.equal(captures(daemon), 1);

  // What the button sends (its payload on its command topic) brings a newer frame.
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  cleanups.push(() => client.endAsync());
  const press = () => client.publishAsync(`${daemon.id}/snapshot/request`, 'PRESS');
  const asked = await freshImage(broker, camera.topic, press);
  const b = await frameOf(asked);
  assert.ok(b.captureMs > a.captureMs, `a newer frame: captured at ${a.captureMs}, then ${b.captureMs}`);

  // While a viewer watches, a snapshot is the shared pipeline's newest frame: no second capture.
  const page = await fixture.browser.context.newPage();
  cleanups.push(() => page.close());
  await page.goto(`${daemon.pageUrl}?id=${encodeURIComponent(daemon.id)}`);
  await until('page frames', async () => (await videoStats(page))?.framesDecoded > 5);
  const running = captures(daemon);
  await new Promise((r) => setTimeout(r, 5500)); // the request budget: one per 5 s
  const live = await freshImage(broker, camera.topic, press);
  assert.equal(captures(daemon), running);
  t.diagnostic(`snapshot: ${live.length} bytes; captures started: ${captures(daemon)}`);
});

test('spyglass homeassistant --remove deletes the entries and the snapshot; another prefix is honoured', async () => {
  const { broker, daemon } = await start(['--homeassistant', 'on', '--homeassistant-prefix', 'ha-test', '--homeassistant-interval', '0']);
  const found = await until('entries under ha-test/', async () => {
    const r = await collectDiscovery(broker.url, { prefix: 'ha-test', waitMs: 300 });
    return r.length === 4 ? r : null;
  });
  assert.ok(found.every((m) => m.topic.startsWith('ha-test/')));
  assert.deepEqual(await collectDiscovery(broker.url, { waitMs: 300 }), [], 'nothing under homeassistant/');
  // Interval 0: no snapshot until asked for.
  await assert.rejects(fetchImage(broker.url, `${daemon.id}/snapshot`, { timeoutMs: 1000 }));
  assert.equal(captures(daemon), 0);
  // A flood of requests gets the budget's two snapshots (2 at once, then one per 5 s), no more.
  const images = [];
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  cleanups.push(() => client.endAsync());
  client.on('message', (_t, payload, packet) => { if (!packet.retain) images.push(payload.length); });
  await client.subscribeAsync(`${daemon.id}/snapshot`, { qos: 1 });
  for (let i = 0; i < 20; i++) await client.publishAsync(`${daemon.id}/snapshot/request`, 'PRESS');
  await until('two snapshots', () => images.length >= 2, 20000);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(images.length, 2, `snapshots for 20 requests: ${images.length}`);

  const { code, stdout, stderr } = await new Promise((resolve) => {
    execFile(spyglassBin(), ['homeassistant', '--remove', '--id', daemon.id, '--mqtt', broker.url, '--homeassistant-prefix', 'ha-test'],
      { timeout: 30000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
  });
  assert.equal(code, 0, stderr);
  assert.match(stdout, /removed the Home Assistant entries/);
  assert.deepEqual(await collectDiscovery(broker.url, { prefix: 'ha-test', waitMs: 500 }), []);
  await assert.rejects(fetchImage(broker.url, `${daemon.id}/snapshot`, { timeoutMs: 500 }));
  assert.doesNotMatch(daemon.log(), /panicked/);
});

test('with --homeassistant off nothing is announced, no snapshot is taken, the camera never starts', async () => {
  const { broker, daemon } = await start([]);
  const client = await mqtt.connectAsync(broker.url, { protocolVersion: 5 });
  cleanups.push(() => client.endAsync());
  await client.publishAsync(`${daemon.id}/snapshot/request`, 'PRESS');
  assert.deepEqual(await collectDiscovery(broker.url, { waitMs: 1500 }), []);
  await assert.rejects(fetchImage(broker.url, `${daemon.id}/snapshot`, { timeoutMs: 500 }));
  assert.equal(captures(daemon), 0);
});

// The Home Assistant MQTT discovery checker (web/test/standards/ha-discovery.mjs) tested on its
// own, before spyglass publishes discovery: good and bad camera and sensor configurations
// (abbreviations, "~", availability, device), real JPEGs made by cjpeg and decoded by djpeg, and
// the whole path through a private Mosquitto on 127.0.0.1, CLI included.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { Broker, fileFixture, webDir } from './harness.mjs';
import {
  checkBroker, checkDiscoveryMessage, decodeJpeg, expandDiscovery, fetchImage,
} from './standards/ha-discovery.mjs';

const { cleanups } = fileFixture();

const CAMERA_TOPIC = 'homeassistant/camera/garage_cam1/config';

/** A camera configuration as the docs describe it, every key spelled out. */
function goodCamera() {
  return {
    name: null,
    unique_id: 'spyglass_garage_cam1_camera',
    topic: 'garage/cam1/snapshot',
    availability: [{ topic: 'garage/cam1/status', value_template: '{{ value_json.state }}', payload_available: 'online', payload_not_available: 'offline' }],
    device: {
      identifiers: ['spyglass_garage_cam1'],
      name: 'garage/cam1',
      manufacturer: 'spyglass',
      model: 'spyglass camera',
      sw_version: '0.1.0',
      configuration_url: 'http://cam1.lan:8080/',
    },
    origin: { name: 'spyglass', sw_version: '0.1.0', support_url: 'http://cam1.lan:8080/' },
  };
}

/** The same, abbreviated and with a "~" base topic. */
function abbreviatedCamera() {
  return {
    '~': 'garage/cam1',
    name: null,
    uniq_id: 'spyglass_garage_cam1_camera',
    t: '~/snapshot',
    avty: [{ t: '~/status', val_tpl: '{{ value_json.state }}', pl_avail: 'online', pl_not_avail: 'offline' }],
    dev: { ids: ['spyglass_garage_cam1'], name: 'garage/cam1', mf: 'spyglass', mdl: 'spyglass camera', sw: '0.1.0', cu: 'http://cam1.lan:8080/' },
    o: { name: 'spyglass', sw: '0.1.0', url: 'http://cam1.lan:8080/' },
  };
}

const check = (topic, payload) => checkDiscoveryMessage(topic, JSON.stringify(payload));

test('a documented camera configuration passes, without warnings', () => {
  const r = check(CAMERA_TOPIC, goodCamera());
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.warnings, []);
  assert.equal(r.component, 'camera');
  assert.equal(r.nodeId, null);
  assert.equal(r.objectId, 'garage_cam1');
  const n = checkDiscoveryMessage('homeassistant/camera/garage/cam1/config', JSON.stringify(goodCamera()));
  assert.deepEqual([n.nodeId, n.objectId, n.errors], ['garage', 'cam1', []]);
});

test('abbreviations and "~" expand to the same configuration', () => {
  const r = check(CAMERA_TOPIC, abbreviatedCamera());
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.config, goodCamera());
  // "~" at the end of a value, and in an availability entry.
  const e = expandDiscovery({ '~': 'a/b', stat_t: 'x/~', avty: [{ t: '~/s' }], name: '~x~' });
  assert.equal(e.state_topic, 'x/a/b');
  assert.equal(e.availability[0].topic, 'a/b/s');
  assert.equal(e.name, '~x~', 'only keys ending in "topic" are expanded');
});

test('the topic: <prefix>/<component>/[<node_id>/]<object_id>/config', () => {
  assert.deepEqual(checkDiscoveryMessage('homeassistant/camera/cam1/config', JSON.stringify(goodCamera())).errors, []);
  assert.match(check('homeassistant/camera/config', goodCamera()).errors[0], /not homeassistant\/<component>/);
  assert.match(check('homeassistant/camera/a/b/c/config', goodCamera()).errors[0], /not homeassistant\/<component>/);
  assert.match(check('homeassistant/camera/garage.cam1/config', goodCamera()).errors[0], /object_id "garage.cam1"/);
  assert.match(check('other/camera/cam1/config', goodCamera()).errors[0], /not homeassistant/);
  assert.deepEqual(checkDiscoveryMessage('ha2/camera/cam1/config', JSON.stringify(goodCamera()), { prefix: 'ha2' }).errors, []);
});

test('an empty payload removes the entity; non-JSON and non-objects are errors', () => {
  const removed = checkDiscoveryMessage(CAMERA_TOPIC, Buffer.alloc(0));
  assert.equal(removed.removed, true);
  assert.deepEqual(removed.errors, []);
  assert.match(checkDiscoveryMessage(CAMERA_TOPIC, '{"topic":').errors[0], /not JSON/);
  assert.match(checkDiscoveryMessage(CAMERA_TOPIC, '["a"]').errors[0], /JSON object/);
});

test('bad camera configurations get precise errors', () => {
  const cases = [
    [(c) => { delete c.topic; }, /"topic" is required for a camera/],
    [(c) => { c.topic = 'garage/+/snapshot'; }, /"topic" is a filter with wildcards/],
    [(c) => { c.topic = 'garage/#/x'; }, /"topic" "#" must be the whole last level/],
    [(c) => { c.topic = '~/snapshot'; }, /"topic" still starts or ends with "~"/],
    [(c) => { c.topic = ''; }, /"topic" must be a non-empty string/],
    [(c) => { c.availability_topic = 'garage/cam1/status'; }, /"availability" and "availability_topic" must not be used together/],
    [(c) => { c.availability = []; }, /"availability" must be a non-empty list/],
    [(c) => { delete c.availability[0].topic; }, /availability\[0\] has no "topic"/],
    [(c) => { c.availability[0].payload_available = true; }, /availability\[0\]\.payload_available must be a string/],
    [(c) => { c.availability[0].value_template = '{{ value_json.state '; }, /availability\[0\]\.value_template has unbalanced/],
    [(c) => { c.availability_mode = 'some'; }, /"availability_mode" must be all, any or latest/],
    [(c) => { delete c.device.identifiers; }, /"device" needs "identifiers" or "connections"/],
    [(c) => { c.device.identifiers = []; }, /device\.identifiers must be a non-empty string or a list/],
    [(c) => { c.device.connections = ['mac', '02:5b:26:a8:dc:12']; }, /device\.connections must be a list of \[type, id\] pairs/],
    [(c) => { c.device.configuration_url = 'ftp://cam1.lan/'; }, /configuration_url must be an http:\/\/, https:\/\/ or homeassistant:\/\/ URL/],
    [(c) => { c.device.configuration_url = 'cam1.lan:8080'; }, /configuration_url must be/],
    [(c) => { c.device.sw_version = 1; }, /device\.sw_version must be a string/],
    [(c) => { delete c.unique_id; }, /"device" needs "unique_id" on the entity/],
    [(c) => { c.unique_id = ''; }, /"unique_id" must not be empty/],
    [(c) => { c.image_encoding = 'base64'; }, /"image_encoding" can only be "b64"/],
    [(c) => { c.qos = 3; }, /"qos" must be 0, 1 or 2/],
    [(c) => { c.name = 5; }, /"name" must be a string or null/],
    [(c) => { c.icon = 'camera'; }, /"icon" must look like "mdi:camera"/],
    [(c) => { c.entity_category = 'primary'; }, /"entity_category" must be config or diagnostic/],
    [(c) => { c.enabled_by_default = 'yes'; }, /"enabled_by_default" must be a boolean/],
    [(c) => { c.origin = { sw: '1' }; }, /"origin" needs a "name"/],
    [(c) => { c.t = 'garage/cam1/other'; }, /"topic" is given twice/],
    [(c) => { c['~'] = ''; }, /"~" \(base topic\) must be a non-empty string/],
  ];
  for (const [change, want] of cases) {
    const c = goodCamera();
    change(c);
    const r = check(CAMERA_TOPIC, c);
    assert.ok(r.errors.some((e) => want.test(e)), `${want}: got ${JSON.stringify(r.errors)}`);
  }
  // b64 is the documented value.
  assert.deepEqual(check(CAMERA_TOPIC, { ...goodCamera(), image_encoding: 'b64' }).errors, []);
});

test('keys Home Assistant ignores and missing advice are warnings, not errors', () => {
  const c = { ...goodCamera(), state_topic: 'garage/cam1/state', colour: 'red' };
  delete c.origin;
  delete c.availability;
  c.device.colour = 'red';
  const r = check(CAMERA_TOPIC, c);
  assert.deepEqual(r.errors, []);
  for (const want of [/"state_topic" is not a camera option/, /"colour" is not a camera option/, /device: "colour"/,
    /no "origin"/, /no availability/]) {
    assert.ok(r.warnings.some((w) => want.test(w)), `${want}: ${JSON.stringify(r.warnings)}`);
  }
});

test('sensor configurations: state_topic, value_template and the sensor rules', () => {
  const sensor = {
    name: 'Viewers', unique_id: 'spyglass_garage_cam1_viewers', state_topic: 'garage/cam1/status',
    value_template: '{{ value_json.viewers }}', state_class: 'measurement', entity_category: 'diagnostic',
    availability_topic: 'garage/cam1/status', availability_template: '{{ value_json.state }}',
    device: { identifiers: 'spyglass_garage_cam1' }, origin: { name: 'spyglass' },
  };
  const topic = 'homeassistant/sensor/garage_cam1/viewers/config';
  assert.deepEqual(check(topic, sensor).errors, []);
  assert.deepEqual(check(topic, sensor).warnings, []);
  const cases = [
    [(s) => { delete s.state_topic; }, /"state_topic" is required for a sensor/],
    [(s) => { s.value_template = '{{ value_json.viewers }'; }, /"value_template" has unbalanced/],
    [(s) => { s.entity_category = 'config'; }, /"entity_category" must be diagnostic for a sensor/],
    [(s) => { s.state_class = 'gauge'; }, /"state_class" must be one of/],
    [(s) => { s.options = ['a']; }, /"options" needs "device_class": "enum"/],
    [(s) => { s.expire_after = -1; }, /"expire_after" must be a non-negative integer/],
    [(s) => { s.last_reset_value_template = '{{ 1 }}'; }, /needs "state_class": "total"/],
  ];
  for (const [change, want] of cases) {
    const s = structuredClone(sensor);
    change(s);
    const r = check(topic, s);
    assert.ok(r.errors.some((e) => want.test(e)), `${want}: got ${JSON.stringify(r.errors)}`);
  }
});

test('device-based discovery: shared options reach each component; each needs platform and unique_id', () => {
  const payload = {
    dev: { ids: 'spyglass_garage_cam1', name: 'garage/cam1' },
    o: { name: 'spyglass' },
    avty_t: 'garage/cam1/status',
    cmps: {
      camera: { p: 'camera', t: 'garage/cam1/snapshot', uniq_id: 'cam1_camera' },
      viewers: { p: 'sensor', stat_t: 'garage/cam1/status', val_tpl: '{{ value_json.viewers }}', uniq_id: 'cam1_viewers' },
    },
  };
  const r = check('homeassistant/device/garage_cam1/config', payload);
  assert.deepEqual(r.errors, []);
  assert.equal(r.components.camera.availability_topic, 'garage/cam1/status');
  assert.equal(r.components.viewers.state_topic, 'garage/cam1/status');
  const bad = structuredClone(payload);
  delete bad.o;
  delete bad.cmps.viewers.uniq_id;
  delete bad.cmps.camera.p;
  const rb = check('homeassistant/device/garage_cam1/config', bad);
  for (const want of [/needs "origin"/, /components\.camera needs "platform"/, /components\.viewers: "unique_id" is required/]) {
    assert.ok(rb.errors.some((e) => want.test(e)), `${want}: ${JSON.stringify(rb.errors)}`);
  }
});

/** A real JPEG made by cjpeg from a PPM: left half red, right half blue. */
function makeJpeg(width = 64, height = 48, { grayscale = false } = {}) {
  const header = Buffer.from(`P6\n${width} ${height}\n255\n`);
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) px.set(x < width / 2 ? [220, 20, 20] : [20, 20, 220], (y * width + x) * 3);
  }
  return execFileSync('cjpeg', ['-quality', '90', ...(grayscale ? ['-grayscale'] : [])], { input: Buffer.concat([header, px]) });
}

test('decodeJpeg decodes a real JPEG to its size and pixels, and refuses broken ones', async () => {
  const jpeg = makeJpeg(64, 48);
  const img = await decodeJpeg(jpeg);
  assert.deepEqual([img.width, img.height, img.rgb.length], [64, 48, 64 * 48 * 3]);
  const at = (x, y) => [...img.rgb.subarray((y * 64 + x) * 3, (y * 64 + x) * 3 + 3)];
  assert.ok(at(10, 20)[0] > 180 && at(10, 20)[2] < 70, `left is red: ${at(10, 20)}`);
  assert.ok(at(50, 20)[2] > 180 && at(50, 20)[0] < 70, `right is blue: ${at(50, 20)}`);
  const grey = await decodeJpeg(makeJpeg(32, 16, { grayscale: true }));
  assert.deepEqual([grey.width, grey.height, grey.rgb.length], [32, 16, 32 * 16 * 3]);

  // Truncated in the entropy-coded data: djpeg warns ("Premature end of JPEG file").
  await assert.rejects(decodeJpeg(jpeg.subarray(0, Math.floor(jpeg.length * 0.6))), /djpeg: exit/);
  // Only the headers survive.
  const sos = jpeg.indexOf(Buffer.from([0xff, 0xda]));
  await assert.rejects(decodeJpeg(jpeg.subarray(0, sos + 20)), /djpeg: exit/);
  await assert.rejects(decodeJpeg(Buffer.from('not an image at all')), /no SOI/);
  await assert.rejects(decodeJpeg(Buffer.concat([Buffer.from([0xff, 0xd8]), Buffer.alloc(200, 7)])), /djpeg/);
});

test('through a real broker: every retained discovery message is checked; the camera image is fetched and decoded', async () => {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const client = mqtt.connect(broker.url, { protocolVersion: 5 });
  await new Promise((r) => client.once('connect', r));
  const jpeg = makeJpeg(64, 48);
  const publish = (topic, payload) => client.publishAsync(topic, payload, { qos: 1, retain: true });
  await publish(CAMERA_TOPIC, JSON.stringify(abbreviatedCamera()));
  await publish('garage/cam1/snapshot', jpeg);
  const b64 = { ...goodCamera(), unique_id: 'b64_cam', topic: 'garage/cam2/snapshot', image_encoding: 'b64' };
  await publish('homeassistant/camera/garage_cam2/config', JSON.stringify(b64));
  await publish('garage/cam2/snapshot', jpeg.toString('base64'));
  const bad = goodCamera();
  delete bad.topic;
  await publish('homeassistant/camera/broken/config', JSON.stringify(bad));
  await client.endAsync();

  const { results, errors } = await checkBroker(broker.url, { waitMs: 500 });
  assert.equal(results.length, 3);
  assert.ok(results.every((r) => r.retain), 'the discovery messages are retained');
  assert.deepEqual(errors, ['homeassistant/camera/broken/config: "topic" is required for a camera']);

  const cam = results.find((r) => r.topic === CAMERA_TOPIC);
  const img = await fetchImage(broker.url, cam.config.topic, { timeoutMs: 5000 });
  assert.equal(img.retain, true);
  const decoded = await decodeJpeg(img.payload);
  assert.deepEqual([decoded.width, decoded.height], [64, 48]);

  // The CLI: the same checks, the images decoded, exit status 1 because of the broken entry.
  const { code, stdout } = await new Promise((resolve) => {
    execFile(process.execPath, [join(webDir, 'test', 'standards', 'ha-discovery.mjs'), '--broker', broker.url, '--wait', '500', '--images'],
      { cwd: webDir, timeout: 60000 }, (err, stdout) => resolve({ code: err ? err.code : 0, stdout }));
  });
  assert.equal(code, 1);
  const report = JSON.parse(stdout);
  const images = Object.fromEntries(report.results.filter((r) => r.image).map((r) => [r.topic, r.image]));
  assert.deepEqual(images[CAMERA_TOPIC], { bytes: jpeg.length, width: 64, height: 48 });
  assert.deepEqual(images['homeassistant/camera/garage_cam2/config'], { bytes: jpeg.length, width: 64, height: 48 });
  assert.deepEqual(report.errors, ['homeassistant/camera/broken/config: "topic" is required for a camera']);
});

test('fetchImage: a message published after subscribing (a snapshot on request) is taken; silence times out', async () => {
  const broker = await Broker.start();
  cleanups.push(() => broker.close());
  const jpeg = makeJpeg(16, 16);
  const img = await fetchImage(broker.url, 'garage/cam3/snapshot', {
    timeoutMs: 5000,
    trigger: async () => {
      const c = mqtt.connect(broker.url, { protocolVersion: 5 });
      await new Promise((r) => c.once('connect', r));
      await c.publishAsync('garage/cam3/snapshot', jpeg, { qos: 1 });
      await c.endAsync();
    },
  });
  assert.equal(img.retain, false);
  assert.deepEqual(img.payload, jpeg);
  await assert.rejects(fetchImage(broker.url, 'garage/none/snapshot', { timeoutMs: 300 }), /no message on garage\/none\/snapshot within 300 ms/);
});

test('a button (snapshot on request) is checked against button.mqtt', () => {
  const button = {
    name: 'Snapshot', unique_id: 'spyglass_garage_cam1_snapshot', command_topic: 'garage/cam1/snapshot/request',
    payload_press: 'PRESS', availability: goodCamera().availability, device: { identifiers: ['spyglass_garage_cam1'] },
    origin: { name: 'spyglass' },
  };
  const topic = 'homeassistant/button/garage_cam1/snapshot/config';
  const good = check(topic, button);
  assert.deepEqual([good.errors, good.warnings], [[], []]);
  assert.deepEqual(check(topic, { ...button, command_topic: 'garage/+/snapshot' }).errors, ['"command_topic" is a filter with wildcards, not one topic']);
  assert.deepEqual(check(topic, { ...button, retain: 'yes' }).errors, ['"retain" must be a boolean']);
  const { command_topic: _, ...silent } = button;
  assert.deepEqual(check(topic, silent).errors, ['"command_topic" is needed for the button to send anything']);
  assert.equal(check(topic, { ...button, topic: 'x' }).warnings[0], '"topic" is not a button option: Home Assistant ignores it');
});

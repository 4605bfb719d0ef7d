// A checker for Home Assistant MQTT discovery, playing Home Assistant's part in the tests: it
// reads every discovery message under a prefix from a real broker, expands it as Home Assistant
// does (abbreviated keys, the `~` base topic), checks each camera and sensor configuration
// against Home Assistant's documented schema, and fetches a camera's image topic and decodes the
// JPEG with Debian's `djpeg` (libjpeg-turbo).
//
// The schema follows Home Assistant's documentation (home-assistant/home-assistant.io):
// - MQTT discovery (topic format, payload rules, `~`, abbreviation tables, origin, device-based
//   discovery): source/_integrations/mqtt.markdown, "MQTT Discovery" and "Using Availability
//   topics" (commit 0a314403e71f72c2fa6fdcb51b28d4876b4ab7c2),
//   https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery
// - MQTT camera: source/_integrations/camera.mqtt.markdown (commit 9e4a69ab998700a518e366a7f54551a150fccf94),
//   https://www.home-assistant.io/integrations/camera.mqtt/
// - MQTT sensor: source/_integrations/sensor.mqtt.markdown (same commit),
//   https://www.home-assistant.io/integrations/sensor.mqtt/
// - MQTT button: source/_integrations/button.mqtt.markdown (commit
//   03048e091609184b36258ef4d06d5738a2623fb5), https://www.home-assistant.io/integrations/button.mqtt/
// Where the documentation is vague, Home Assistant's code decides: `~` is expanded at the start or
// end of the value of every key that ends in "topic" (so `topic` too) and of each availability
// entry's `topic` (homeassistant/components/mqtt/discovery.py, _replace_topic_base).
//
// Results: `{ topic, component, nodeId, objectId, removed, config, errors: [], warnings: [] }`.
// Errors are what Home Assistant would refuse or what breaks the entity (a missing required key,
// a wrong type, availability given twice, a device without identifiers...); warnings are keys
// Home Assistant ignores (unknown or not for this platform) and advice the docs give (origin).
//
//   import { checkDiscoveryMessage, collectDiscovery, fetchImage, decodeJpeg } from ...
//   CLI: node test/standards/ha-discovery.mjs --broker mqtt://127.0.0.1:PORT [--prefix P]
//        [--wait MS] [--images]     (prints JSON; exit status 1 on any error)

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';

// Abbreviations (mqtt.markdown, "Supported abbreviations in MQTT discovery messages"): the ones
// for the options of the camera, button and sensor platforms, availability, and device-based
// discovery.
export const ABBREVIATIONS = {
  avty: 'availability', avty_mode: 'availability_mode', avty_t: 'availability_topic',
  avty_tpl: 'availability_template', cmd_t: 'command_topic', cmps: 'components', dev: 'device', dev_cla: 'device_class',
  e: 'encoding', en: 'enabled_by_default', ent_cat: 'entity_category', ent_pic: 'entity_picture',
  exp_aft: 'expire_after', frc_upd: 'force_update', ic: 'icon', img_e: 'image_encoding',
  json_attr_t: 'json_attributes_topic', json_attr_tpl: 'json_attributes_template',
  lrst_val_tpl: 'last_reset_value_template', o: 'origin', obj_id: 'object_id', ops: 'options',
  p: 'platform', pl_avail: 'payload_available', pl_not_avail: 'payload_not_available',
  pl_prs: 'payload_press', ret: 'retain',
  stat_cla: 'state_class', stat_t: 'state_topic', sug_dsp_prc: 'suggested_display_precision',
  t: 'topic', uniq_id: 'unique_id', unit_of_meas: 'unit_of_measurement', val_tpl: 'value_template',
};
// "Supported abbreviations for device registry configuration".
export const DEVICE_ABBREVIATIONS = {
  cu: 'configuration_url', cns: 'connections', ids: 'identifiers', mf: 'manufacturer',
  mdl: 'model', mdl_id: 'model_id', hw: 'hw_version', sw: 'sw_version', sa: 'suggested_area',
  sn: 'serial_number',
};
// "Supported abbreviations for origin info".
export const ORIGIN_ABBREVIATIONS = { sw: 'sw_version', url: 'support_url' };

const DEVICE_KEYS = new Set([
  'configuration_url', 'connections', 'hw_version', 'identifiers', 'manufacturer', 'model',
  'model_id', 'name', 'serial_number', 'suggested_area', 'sw_version', 'via_device',
]);
const ORIGIN_KEYS = new Set(['name', 'sw_version', 'support_url']);
const AVAILABILITY_ENTRY_KEYS = new Set(['topic', 'payload_available', 'payload_not_available', 'value_template']);

// Options every MQTT entity documents (camera.mqtt and sensor.mqtt share them), plus `qos`
// (documented for the sensor; part of every MQTT platform), `origin` and the base topic.
const COMMON_KEYS = new Set([
  'availability', 'availability_mode', 'availability_template', 'availability_topic', 'device',
  'enabled_by_default', 'encoding', 'entity_category', 'entity_picture', 'icon',
  'json_attributes_template', 'json_attributes_topic', 'name', 'object_id', 'origin',
  'payload_available', 'payload_not_available', 'qos', 'unique_id', 'platform',
]);
const PLATFORM_KEYS = {
  camera: new Set(['topic', 'image_encoding']),
  button: new Set(['command_topic', 'payload_press', 'retain', 'device_class']),
  sensor: new Set([
    'state_topic', 'value_template', 'device_class', 'expire_after', 'force_update',
    'last_reset_value_template', 'options', 'suggested_display_precision', 'state_class',
    'unit_of_measurement',
  ]),
};
const STATE_CLASSES = new Set(['measurement', 'measurement_angle', 'total', 'total_increasing']);
// Shared options of a device-based discovery payload ("Device discovery payload").
const SHARED_KEYS = ['availability', 'availability_mode', 'availability_template', 'availability_topic',
  'payload_available', 'payload_not_available', 'origin', 'device', 'command_topic', 'state_topic', 'qos', 'encoding'];

const ID = /^[a-zA-Z0-9_-]+$/;

/** Rename abbreviated keys of `obj` with `table`; a key given in both forms is an error. */
function expandKeys(obj, table, where, errors) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) {
    const full = table[k] ?? k;
    if (full in out) errors.push(`${where}: "${full}" is given twice (as "${k}" and in another form)`);
    out[full] = v;
  }
  return out;
}

/**
 * A discovery payload as Home Assistant reads it: abbreviations expanded (top level, each
 * availability entry, device, origin, each component of a device payload) and `~` replaced.
 */
export function expandDiscovery(payload, errors = []) {
  const c = expandKeys(payload, ABBREVIATIONS, 'payload', errors);
  if (Array.isArray(c.availability)) {
    c.availability = c.availability.map((a, i) => (isObject(a) ? expandKeys(a, ABBREVIATIONS, `availability[${i}]`, errors) : a));
  }
  if (isObject(c.device)) c.device = expandKeys(c.device, DEVICE_ABBREVIATIONS, 'device', errors);
  if (isObject(c.origin)) c.origin = expandKeys(c.origin, ORIGIN_ABBREVIATIONS, 'origin', errors);
  if ('~' in c) {
    const base = c['~'];
    delete c['~'];
    if (typeof base !== 'string' || !base) errors.push('"~" (base topic) must be a non-empty string');
    else {
      const sub = (v) => (typeof v === 'string' && v ? v.replace(/^~/, base).replace(/~$/, base) : v);
      for (const k of Object.keys(c)) if (k.endsWith('topic')) c[k] = sub(c[k]);
      if (Array.isArray(c.availability)) for (const a of c.availability) if (isObject(a)) a.topic = sub(a.topic);
    }
  }
  if (isObject(c.components)) {
    for (const [id, comp] of Object.entries(c.components)) {
      if (isObject(comp)) c.components[id] = expandDiscovery(comp, errors);
    }
  }
  return c;
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const isString = (v) => typeof v === 'string';

/** An MQTT topic name or filter: non-empty, no NUL, wildcards only as whole levels (`#` last). */
export function topicProblem(t, { wildcards = true } = {}) {
  if (!isString(t) || t.length === 0) return 'must be a non-empty string';
  if (Buffer.byteLength(t) > 65535) return 'is longer than 65535 bytes';
  if (t.includes('\u0000')) return 'contains NUL';
  const levels = t.split('/');
  for (const [i, l] of levels.entries()) {
    if (l.includes('+') && l !== '+') return `has "+" inside a level ("${l}")`;
    if (l.includes('#') && (l !== '#' || i !== levels.length - 1)) return '"#" must be the whole last level';
    if (!wildcards && (l === '+' || l === '#')) return 'is a filter with wildcards, not one topic';
  }
  if (t.startsWith('~') || t.endsWith('~')) return 'still starts or ends with "~" (no "~" base topic defined)';
  return null;
}

/** A Jinja template as HA reads it: a string with balanced {{ }} and {% %}. */
function templateProblem(t) {
  if (!isString(t) || !t) return 'must be a non-empty template string';
  const count = (s) => t.split(s).length - 1;
  if (count('{{') !== count('}}') || count('{%') !== count('%}')) return 'has unbalanced {{ }} or {% %}';
  return null;
}

function checkEntity(platform, c, errors, warnings) {
  const need = (cond, msg) => { if (!cond) errors.push(msg); };
  const str = (k) => { if (k in c && !isString(c[k])) errors.push(`"${k}" must be a string`); };
  const topic = (k, opts) => {
    if (!(k in c)) return;
    const p = topicProblem(c[k], opts);
    if (p) errors.push(`"${k}" ${p}`);
  };
  const template = (k) => {
    if (!(k in c)) return;
    const p = templateProblem(c[k]);
    if (p) errors.push(`"${k}" ${p}`);
  };

  for (const k of Object.keys(c)) {
    if (!COMMON_KEYS.has(k) && !PLATFORM_KEYS[platform].has(k)) {
      warnings.push(`"${k}" is not a ${platform} option: Home Assistant ignores it`);
    }
  }
  if ('name' in c && c.name !== null && !isString(c.name)) errors.push('"name" must be a string or null');
  for (const k of ['unique_id', 'object_id', 'encoding', 'entity_picture', 'payload_available', 'payload_not_available']) str(k);
  if ('unique_id' in c && isString(c.unique_id) && !c.unique_id) errors.push('"unique_id" must not be empty');
  if ('qos' in c && ![0, 1, 2].includes(c.qos)) errors.push('"qos" must be 0, 1 or 2');
  if ('enabled_by_default' in c && typeof c.enabled_by_default !== 'boolean') errors.push('"enabled_by_default" must be a boolean');
  if ('icon' in c && !(isString(c.icon) && /^[a-z0-9_-]+:[a-z0-9_-]+$/i.test(c.icon))) errors.push('"icon" must look like "mdi:camera"');
  if ('entity_category' in c) {
    const allowed = platform === 'sensor' ? ['diagnostic'] : ['config', 'diagnostic'];
    need(allowed.includes(c.entity_category), `"entity_category" must be ${allowed.join(' or ')} for a ${platform}`);
  }
  topic('json_attributes_topic');
  template('json_attributes_template');
  if ('json_attributes_template' in c && !('json_attributes_topic' in c)) {
    warnings.push('"json_attributes_template" without "json_attributes_topic" has no effect');
  }

  // Availability ("Using Availability topics").
  if ('availability' in c && 'availability_topic' in c) errors.push('"availability" and "availability_topic" must not be used together');
  topic('availability_topic', { wildcards: false });
  template('availability_template');
  if ('availability' in c) {
    if (!Array.isArray(c.availability) || c.availability.length === 0) errors.push('"availability" must be a non-empty list');
    else {
      c.availability.forEach((a, i) => {
        if (!isObject(a)) return errors.push(`availability[${i}] must be a mapping`);
        if (!('topic' in a)) errors.push(`availability[${i}] has no "topic" (required)`);
        else {
          const p = topicProblem(a.topic, { wildcards: false });
          if (p) errors.push(`availability[${i}].topic ${p}`);
        }
        for (const k of ['payload_available', 'payload_not_available']) {
          if (k in a && !isString(a[k])) errors.push(`availability[${i}].${k} must be a string`);
        }
        if ('value_template' in a) {
          const p = templateProblem(a.value_template);
          if (p) errors.push(`availability[${i}].value_template ${p}`);
        }
        for (const k of Object.keys(a)) if (!AVAILABILITY_ENTRY_KEYS.has(k)) warnings.push(`availability[${i}]: "${k}" is not an availability option`);
      });
    }
  }
  if ('availability_mode' in c) need(['all', 'any', 'latest'].includes(c.availability_mode), '"availability_mode" must be all, any or latest');
  if ('availability_mode' in c && !('availability' in c)) warnings.push('"availability_mode" applies to "availability" only');
  if ('availability_template' in c && !('availability_topic' in c)) warnings.push('"availability_template" applies to "availability_topic" only');
  if (!('availability' in c) && !('availability_topic' in c)) warnings.push('no availability: the entity shows as available even when the device is offline');

  // Device ("Only works when unique_id is set. At least one of identifiers or connections").
  if ('device' in c) {
    const d = c.device;
    if (!isObject(d)) errors.push('"device" must be a mapping');
    else {
      if (!('unique_id' in c)) errors.push('"device" needs "unique_id" on the entity');
      if (!('identifiers' in d) && !('connections' in d)) errors.push('"device" needs "identifiers" or "connections"');
      if ('identifiers' in d) {
        const ids = Array.isArray(d.identifiers) ? d.identifiers : [d.identifiers];
        if (ids.length === 0 || !ids.every((x) => isString(x) && x)) errors.push('device.identifiers must be a non-empty string or a list of them');
      }
      if ('connections' in d) {
        const ok = Array.isArray(d.connections) && d.connections.every((p) => Array.isArray(p) && p.length === 2 && p.every(isString));
        if (!ok) errors.push('device.connections must be a list of [type, id] pairs');
      }
      for (const k of ['hw_version', 'manufacturer', 'model', 'model_id', 'name', 'serial_number', 'suggested_area', 'sw_version', 'via_device']) {
        if (k in d && !isString(d[k])) errors.push(`device.${k} must be a string`);
      }
      if ('configuration_url' in d) {
        let ok = false;
        try {
          ok = ['http:', 'https:', 'homeassistant:'].includes(new URL(d.configuration_url).protocol);
        } catch { /* not a URL */ }
        if (!ok) errors.push('device.configuration_url must be an http://, https:// or homeassistant:// URL');
      }
      for (const k of Object.keys(d)) if (!DEVICE_KEYS.has(k)) warnings.push(`device: "${k}" is not a device option`);
    }
  }
  // Origin: recommended for one component, required for device-based discovery (checked there).
  if ('origin' in c) {
    if (!isObject(c.origin) || !isString(c.origin.name) || !c.origin.name) errors.push('"origin" needs a "name"');
    else {
      for (const k of ['sw_version', 'support_url']) if (k in c.origin && !isString(c.origin[k])) errors.push(`origin.${k} must be a string`);
      for (const k of Object.keys(c.origin)) if (!ORIGIN_KEYS.has(k)) warnings.push(`origin: "${k}" is not an origin option`);
    }
  } else warnings.push('no "origin": Home Assistant recommends it');

  if (platform === 'camera') {
    need('topic' in c, '"topic" is required for a camera');
    topic('topic', { wildcards: false });
    if ('image_encoding' in c) need(c.image_encoding === 'b64', '"image_encoding" can only be "b64" (or be left out for raw image bytes)');
  } else if (platform === 'button') {
    // button.mqtt: command_topic (a topic, no wildcards), payload_press (string, "PRESS"), retain.
    need('command_topic' in c, '"command_topic" is needed for the button to send anything');
    topic('command_topic', { wildcards: false });
    str('payload_press');
    if ('retain' in c) need(typeof c.retain === 'boolean', '"retain" must be a boolean');
    if ('device_class' in c) need(['identify', 'restart', 'update'].includes(c.device_class), '"device_class" must be identify, restart or update');
  } else if (platform === 'sensor') {
    need('state_topic' in c, '"state_topic" is required for a sensor');
    topic('state_topic');
    template('value_template');
    template('last_reset_value_template');
    for (const k of ['device_class', 'unit_of_measurement']) if (k in c && c[k] !== null && !isString(c[k])) errors.push(`"${k}" must be a string or null`);
    if ('state_class' in c) need(STATE_CLASSES.has(c.state_class), `"state_class" must be one of ${[...STATE_CLASSES].join(', ')}`);
    if ('expire_after' in c) need(Number.isInteger(c.expire_after) && c.expire_after >= 0, '"expire_after" must be a non-negative integer');
    if ('force_update' in c) need(typeof c.force_update === 'boolean', '"force_update" must be a boolean');
    if ('suggested_display_precision' in c) {
      need(Number.isInteger(c.suggested_display_precision) && c.suggested_display_precision >= 0, '"suggested_display_precision" must be a non-negative integer');
    }
    if ('options' in c) {
      need(Array.isArray(c.options) && c.options.length > 0, '"options" must be a non-empty list');
      need(c.device_class === 'enum', '"options" needs "device_class": "enum"');
      need(!('state_class' in c) && !('unit_of_measurement' in c), '"options" cannot be used with "state_class" or "unit_of_measurement"');
    }
    if ('last_reset_value_template' in c) need(c.state_class === 'total', '"last_reset_value_template" needs "state_class": "total"');
  }
}

/**
 * Check one discovery message. `topic` is its MQTT topic, `payload` a Buffer or string;
 * `prefix` the discovery prefix (default "homeassistant").
 */
export function checkDiscoveryMessage(topic, payload, { prefix = 'homeassistant' } = {}) {
  const r = { topic, component: null, nodeId: null, objectId: null, removed: false, config: null, errors: [], warnings: [] };
  const rest = topic.startsWith(`${prefix}/`) ? topic.slice(prefix.length + 1).split('/') : null;
  if (!rest || rest.at(-1) !== 'config' || rest.length < 3 || rest.length > 4) {
    r.errors.push(`topic is not ${prefix}/<component>/[<node_id>/]<object_id>/config`);
    return r;
  }
  [r.component] = rest;
  if (rest.length === 4) [, r.nodeId, r.objectId] = rest;
  else [, r.objectId] = rest;
  for (const [what, v] of [['node_id', r.nodeId], ['object_id', r.objectId]]) {
    if (v !== null && !ID.test(v)) r.errors.push(`${what} "${v}" must match [a-zA-Z0-9_-]+`);
  }
  const text = Buffer.isBuffer(payload) ? payload.toString('utf8') : String(payload);
  if (text.length === 0) {
    r.removed = true;
    return r;
  }
  let raw;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    r.errors.push(`payload is not JSON: ${e.message}`);
    return r;
  }
  if (!isObject(raw)) {
    r.errors.push('payload must be a JSON object');
    return r;
  }
  const c = expandDiscovery(raw, r.errors);
  r.config = c;
  if (r.component === 'device') {
    checkDevicePayload(c, r);
  } else if (PLATFORM_KEYS[r.component]) {
    if ('platform' in c) r.warnings.push('"platform" belongs in device-based discovery only');
    checkEntity(r.component, c, r.errors, r.warnings);
  } else {
    r.warnings.push(`component "${r.component}" is not checked (camera, button and sensor are)`);
  }
  return r;
}

/** A device-based payload (`<prefix>/device/<object_id>/config`): each component with the shared options. */
function checkDevicePayload(c, r) {
  if (!isObject(c.device)) r.errors.push('device-based discovery needs "device"');
  if (!isObject(c.origin)) r.errors.push('device-based discovery needs "origin"');
  if (!isObject(c.components)) {
    r.errors.push('device-based discovery needs "components" (a mapping)');
    return;
  }
  r.components = {};
  for (const [id, comp] of Object.entries(c.components)) {
    if (!ID.test(id)) r.errors.push(`component id "${id}" must match [a-zA-Z0-9_-]+`);
    if (!isObject(comp) || !isString(comp.platform)) {
      r.errors.push(`components.${id} needs "platform"`);
      continue;
    }
    const merged = { ...Object.fromEntries(SHARED_KEYS.filter((k) => k in c).map((k) => [k, c[k]])), ...comp };
    delete merged.platform;
    const errors = [];
    const warnings = [];
    if (!PLATFORM_KEYS[comp.platform]) {
      warnings.push(`platform "${comp.platform}" is not checked`);
    } else {
      if (!('unique_id' in merged)) errors.push('"unique_id" is required in device-based discovery');
      checkEntity(comp.platform, merged, errors, warnings);
    }
    r.components[id] = merged;
    r.errors.push(...errors.map((e) => `components.${id}: ${e}`));
    r.warnings.push(...warnings.filter((w) => !w.startsWith('no "origin"')).map((w) => `components.${id}: ${w}`));
  }
}

/** Connect to `url` (mqtt://...), resolving the connected client. */
async function connect(url) {
  const client = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000 });
  await new Promise((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  return client;
}

/**
 * Every message on `<prefix>/#` received within `waitMs` of subscribing (retained ones first):
 * `[{ topic, payload: Buffer, retain }]`, the last one per topic.
 */
export async function collectDiscovery(url, { prefix = 'homeassistant', waitMs = 1500 } = {}) {
  const client = await connect(url);
  const byTopic = new Map();
  client.on('message', (topic, payload, packet) => byTopic.set(topic, { topic, payload, retain: packet.retain }));
  await client.subscribeAsync(`${prefix}/#`, { qos: 1 });
  await new Promise((r) => setTimeout(r, waitMs));
  await client.endAsync();
  return [...byTopic.values()];
}

/** Check all discovery messages of a broker: `{ results, errors }` (errors prefixed by topic). */
export async function checkBroker(url, options = {}) {
  const messages = await collectDiscovery(url, options);
  const results = messages.map((m) => ({ ...checkDiscoveryMessage(m.topic, m.payload, options), retain: m.retain }));
  const errors = results.flatMap((r) => r.errors.map((e) => `${r.topic}: ${e}`));
  return { results, errors };
}

/**
 * The first message on `topic` (a retained one, or the next one published), within `timeoutMs`.
 * `trigger` (optional) is called once subscribed, e.g. to ask the device for a snapshot.
 */
export async function fetchImage(url, topic, { timeoutMs = 10000, trigger } = {}) {
  const client = await connect(url);
  try {
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no message on ${topic} within ${timeoutMs} ms`)), timeoutMs);
      client.on('message', (t, payload, packet) => {
        if (t !== topic) return;
        clearTimeout(timer);
        resolve({ payload, retain: packet.retain, at: Date.now() });
      });
    });
    await client.subscribeAsync(topic, { qos: 1 });
    if (trigger) await trigger();
    return await got;
  } finally {
    await client.endAsync();
  }
}

/**
 * Decode a JPEG completely with `djpeg` (libjpeg-turbo): `{ width, height, rgb }` (rgb: Buffer of
 * width*height*3 bytes). Throws on anything that is not a complete, clean JPEG: djpeg's warnings
 * (a truncated or corrupt entropy-coded segment) count as failures.
 */
export async function decodeJpeg(jpeg) {
  if (jpeg.length < 4 || jpeg[0] !== 0xff || jpeg[1] !== 0xd8) throw new Error('not a JPEG (no SOI marker)');
  const child = spawn('djpeg', ['-pnm'], { stdio: ['pipe', 'pipe', 'pipe'] });
  const out = [];
  const err = [];
  child.stdout.on('data', (d) => out.push(d));
  child.stderr.on('data', (d) => err.push(d));
  child.stdin.on('error', () => {}); // djpeg may stop reading a bad file early
  child.stdin.end(jpeg);
  const code = await new Promise((r) => child.on('close', r));
  const stderr = Buffer.concat(err).toString().trim();
  if (code !== 0 || stderr) throw new Error(`djpeg: exit ${code}${stderr ? `: ${stderr}` : ''}`);
  const pnm = Buffer.concat(out);
  // P6 (colour) or P5 (grey): "P6\n<w> <h>\n<max>\n" then the samples.
  const m = /^P([56])\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(pnm.subarray(0, 64).toString('latin1'));
  if (!m) throw new Error('djpeg wrote no PNM image');
  const [, kind, w, h] = m;
  const width = Number(w);
  const height = Number(h);
  const channels = kind === '6' ? 3 : 1;
  const samples = pnm.subarray(m[0].length);
  if (samples.length !== width * height * channels) throw new Error(`djpeg wrote ${samples.length} samples for ${width}x${height}`);
  let rgb = samples;
  if (channels === 1) {
    rgb = Buffer.alloc(width * height * 3);
    for (let i = 0; i < width * height; i++) rgb.fill(samples[i], i * 3, i * 3 + 3);
  }
  return { width, height, rgb };
}

async function main(argv) {
  const option = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : dflt;
  };
  const url = option('--broker');
  if (!url) {
    console.error('usage: node test/standards/ha-discovery.mjs --broker mqtt://HOST:PORT [--prefix P] [--wait MS] [--images]');
    return 2;
  }
  const prefix = option('--prefix', 'homeassistant');
  const { results, errors } = await checkBroker(url, { prefix, waitMs: Number(option('--wait', 1500)) });
  if (argv.includes('--images')) {
    for (const r of results.filter((x) => x.component === 'camera' && x.config?.topic && !x.errors.length)) {
      try {
        const { payload } = await fetchImage(url, r.config.topic, { timeoutMs: 10000 });
        const jpeg = r.config.image_encoding === 'b64' ? Buffer.from(payload.toString(), 'base64') : payload;
        const { width, height } = await decodeJpeg(jpeg);
        r.image = { bytes: jpeg.length, width, height };
      } catch (e) {
        r.errors.push(`image: ${e.message}`);
        errors.push(`${r.topic}: image: ${e.message}`);
      }
    }
  }
  console.log(JSON.stringify({ results, errors }, null, 2));
  return errors.length ? 1 : 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}

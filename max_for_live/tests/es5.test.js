'use strict';
// Max's [js] object runs an old (ES5) JavaScript engine: the device's scripts must parse as ES5 and
// must not call library functions that came later (String.prototype.startsWith, Object.assign...).
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { spawnSync } = require('node:child_process');

const SRC = path.join(__dirname, '..', 'src');
const SCRIPTS = ['stage_logic.js', 'stage_device.js'];

test('the scripts parse as ECMAScript 5', (t) => {
  // Node ships acorn internally; --expose-internals makes it reachable without installing anything.
  const files = SCRIPTS.map((name) => path.join(SRC, name));
  const code = `const acorn = require('internal/deps/acorn/acorn/dist/acorn');
    for (const f of ${JSON.stringify(files)}) {
      try { acorn.parse(require('fs').readFileSync(f, 'utf8'), { ecmaVersion: 5, sourceType: 'script' }); }
      catch (e) { console.log(require('path').basename(f) + ': ' + e.message); process.exitCode = 1; }
    }`;
  const run = spawnSync(process.execPath, ['--expose-internals', '-e', code], { encoding: 'utf8' });
  if (/Cannot find module/.test(run.stderr)) {
    t.skip('this Node has no internal acorn; the textual checks below still run');
    return;
  }
  assert.equal(run.status, 0, run.stdout + run.stderr);
});

test('no ES2015+ syntax in the scripts (textual check)', () => {
  for (const name of SCRIPTS) {
    const code = fs.readFileSync(path.join(SRC, name), 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')          // block comments
      .replace(/\/\/.*$/gm, '')                  // line comments
      .replace(/'(?:\\.|[^'\\])*'/g, "''");      // string literals
    for (const [what, re] of [['let', /\blet\s/], ['const', /\bconst\s/], ['arrow function', /=>/], ['template string', /`/],
      ['class', /\bclass\s/], ['spread', /\.\.\./], ['for...of', /\bfor\s*\([^)]*\bof\b/]]) {
      assert.doesNotMatch(code, re, `${name} uses ${what}`);
    }
  }
});

// Every built-in that ES5 does not have.
const LATER_BUILTINS = `
  ['startsWith', 'endsWith', 'includes', 'repeat', 'padStart', 'padEnd', 'trimStart', 'trimEnd', 'codePointAt', 'normalize']
    .forEach(function (k) { delete String.prototype[k]; });
  ['find', 'findIndex', 'includes', 'fill', 'keys', 'values', 'entries', 'copyWithin', 'flat', 'flatMap', 'at']
    .forEach(function (k) { delete Array.prototype[k]; });
  ['from', 'of'].forEach(function (k) { delete Array[k]; });
  ['assign', 'entries', 'values', 'fromEntries', 'is', 'getOwnPropertySymbols'].forEach(function (k) { delete Object[k]; });
  ['isInteger', 'isFinite', 'isNaN', 'parseFloat', 'parseInt', 'isSafeInteger'].forEach(function (k) { delete Number[k]; });
  ['trunc', 'sign', 'log10', 'log2', 'hypot', 'cbrt', 'fround', 'imul', 'clz32', 'expm1', 'log1p'].forEach(function (k) { delete Math[k]; });
  ['Map', 'Set', 'WeakMap', 'WeakSet', 'Promise', 'Proxy', 'Reflect'].forEach(function (k) { delete this[k]; }, this);
`;

test('the logic runs with only ES5 built-ins (a whole generation, in a stripped sandbox)', () => {
  const ctx = vm.createContext({});
  vm.runInContext(LATER_BUILTINS, ctx);
  assert.equal(vm.runInContext('typeof String.prototype.startsWith + typeof Object.assign + typeof Map', ctx), 'undefinedundefinedundefined');
  vm.runInContext(fs.readFileSync(path.join(SRC, 'stage_logic.js'), 'utf8'), ctx, { filename: 'stage_logic.js' });
  const result = vm.runInContext(`(function () {
    var L = StageLogic;
    var c = new L.Controller({ os: 'macintosh', bootVolume: 'Macintosh HD', tag: 'es5x', now: 1000,
      devicePath: 'Macintosh HD:/Users/alice/Music/Ableton/User Library/STAGE Bridge.amxd' });
    var log = [];
    function run(event) { var a = c.dispatch(event); for (var i = 0; i < a.length; i++) { if (a[i].type !== 'state') { log.push(a[i].type); } } return a; }
    run({ type: 'tick', now: 1500 });
    run({ type: 'osc', address: '/stage/pong', args: ['m4l-es5x-1'] });
    run({ type: 'live', key: 'tempo', value: 123.5 });
    run({ type: 'set', key: 'prompt', value: ' Genres: "Rock" ' });
    run({ type: 'set', key: 'home', value: '~/stage' });
    run({ type: 'generate', transport: { songBeats: 3, playing: true, loopOn: true, loopStart: 0, loopLength: 8 }, date: 0 });
    run({ type: 'recordStarted' });
    run({ type: 'recordStopped' });
    var sent = run({ type: 'bounceReady' });
    var id = c.view().jobId;
    run({ type: 'osc', address: '/stage/job/accepted', args: [id, 0] });
    run({ type: 'osc', address: '/stage/job/progress', args: [id, 50] });
    run({ type: 'osc', address: '/stage/job/done', args: [id, '/Users/alice/stage/outbox/x.take1.wav'] });
    run({ type: 'insert', trackIndex: 0 });
    run({ type: 'reveal' });
    run({ type: 'audition', transport: { playing: true, songBeats: 9 } });
    run({ type: 'live', key: 'playing', value: 0 });
    var saved = L.encodeState(c.snapshot());
    var again = new L.Controller({ os: 'macintosh', bootVolume: 'Macintosh HD', tag: 'es5y', now: 0 });
    again.dispatch({ type: 'restore', value: saved });
    again.dispatch({ type: 'tick', now: 9000 });
    again.dispatch({ type: 'launcher', args: ['failed', 'not', 'found'] });
    var wire = L.wireMessage(sent[0].message);
    return JSON.stringify({ log: log, view: c.view(), atoms: L.toAtoms(wire), restored: again.view(),
      misc: [L.maxToNative('Data:/a', 'macintosh', 'Macintosh HD'), L.nativeToMax('C:\\\\a', 'windows'),
             L.fileUrl('/a b', 'macintosh'), L.planRecording({ bars: 1, bpm: 90, num: 7, den: 8, songBeats: 1 }).startBeats,
             L.parseReply('/stage/status', ['idle', 0, 0, 'none', 'cpu', 'drums=missing']).models.drums] });
  })()`, ctx);
  const r = JSON.parse(result);
  assert.deepEqual(r.log, ['send', 'send', 'send', 'send', 'recorder', 'stopAfter', 'arm', 'gate', 'gate', 'schedule', 'send', 'insertClip', 'reveal',
    'player', 'auditionArm', 'auditionGate', 'player', 'auditionGate', 'player']);
  assert.deepEqual(r.restored.paths, ['/Users/alice/stage/outbox/x.take1.wav']);
  assert.equal(r.restored.status, 'Could not start stage-bridge: not found');
  assert.equal(r.view.state, 'done');
  assert.equal(r.atoms[0], '/stage/generate');
  assert.ok(r.atoms.includes('Genres: "Rock"'));
  assert.ok(r.atoms.includes('/Users/alice/stage/bounces/' + r.view.jobId + '.wav'));
  assert.deepEqual(r.misc, ['/Volumes/Data/a', 'C:/a', 'file:///a%20b', 3.5, 'missing']);
});

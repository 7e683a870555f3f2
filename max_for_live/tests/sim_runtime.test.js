'use strict';
// The Max simulation's own semantics (max_for_live/sim), each as its documentation says (the sources are
// cited in the sim's modules). Each test can fail: it checks the documented behaviour against a plausible
// wrong one.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { Sim, DEFAULT_AMXD } = require('../sim');
const A = require('../sim/atoms');
const osc = require('../sim/osc');
const { readAmxd } = require('../sim/amxd');

// A small patch: boxes [{id, text|maxclass...}] and cords [[src, outlet, dst, inlet]]; a [js] box runs `script`.
function patch(boxes, cords, { script = '', files = {}, ...options } = {}) {
  const all = boxes.map((b) => ({ box: Object.assign({ maxclass: 'newobj', numinlets: 2, numoutlets: 2, patching_rect: [0, 0, 10, 10] }, b) }));
  const device = {
    patcher: { boxes: all, lines: cords.map(([s, o, d, i]) => ({ patchline: { source: [s, o], destination: [d, i] } })) },
    files: Object.fromEntries(Object.entries(Object.assign({ 'test.js': script }, files)).map(([k, v]) => [k, Buffer.from(v)])),
  };
  return new Sim(Object.assign({ device }, options));
}

// a [js] box whose outlet 0 feeds [js collect.js], which records every message it gets
const COLLECT = 'var got = []; function anything() { got.push([messagename].concat(arrayfromargs(arguments))); }' +
  'function msg_int(v) { got.push(["int", v]); } function msg_float(v) { got.push(["float", v]); }' +
  'function list() { got.push(["list"].concat(arrayfromargs(arguments))); } function bang() { got.push(["bang"]); }';
function withCollector(boxes, cords, opts) {
  const sim = patch([...boxes, { id: 'collect', text: 'js collect.js', numinlets: 1, numoutlets: 0 }], cords,
    Object.assign({}, opts, { files: Object.assign({ 'collect.js': COLLECT + ' inlets = 1; outlets = 0;' }, (opts && opts.files) || {}) }));
  sim.got = () => JSON.parse(JSON.stringify(sim.box("collect").js.ctx.got));
  return sim;
}

test('the built .amxd: an audio effect, frozen, with its scripts and a patcher', () => {
  const d = readAmxd(DEFAULT_AMXD);
  assert.equal(d.deviceType, 'aaaa');
  assert.equal(d.frozen, true);
  assert.ok(['stage_device.js', 'stage_logic.js'].every((f) => f in d.files), Object.keys(d.files).join(' '));
  assert.ok(d.patcher.boxes.some((b) => b.box.text === 'js stage_device.js'));
});

test('an object class the simulation does not know fails loading, naming the class', () => {
  assert.throws(() => patch([{ id: 'x', text: 'zl.rev' }], []), /does not know the object class "zl.rev"/);
});

test('include() finds files frozen into the device, and only those', () => {
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], {
    script: 'include("lib.js"); var v = fromLib();', files: { 'lib.js': 'function fromLib() { return 42; }' } });
  assert.equal(sim.box('j').js.ctx.v, 42);
  assert.throws(() => patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { script: 'include("missing.js");' }),
    /can't find file missing.js/);
});

test('Task(fn, obj, args): args is an ARRAY spread into the call; anything else gives the function nothing', () => {
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { script:
    'var calls = []; function f() { calls.push(arrayfromargs(arguments)); }' +
    'function go() { new Task(f, this, [{type: "x"}, 2]).schedule(300); new Task(f, this, {type: "y"}).schedule(300); }' });
  sim.send('j', 0, 'go');
  assert.deepEqual(sim.box('j').js.ctx.calls.length, 0);
  sim.advance(299);
  assert.equal(sim.box('j').js.ctx.calls.length, 0);
  sim.advance(1);
  const calls = JSON.parse(JSON.stringify(sim.box("j").js.ctx.calls));
  assert.deepEqual(calls, [[{ type: 'x' }, 2], []]);
});

test('outlet(): whole numbers leave as int, others as float, strings as symbols, arrays unrolled', () => {
  const sim = withCollector([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [['j', 0, 'collect', 0]], {
    script: 'function go() { outlet(0, 120); outlet(0, 120.5); outlet(0, "set", "a b", 3); outlet(0, ["list", 1.5, 2]); outlet(0, [4, 5]); }' });
  sim.send('j', 0, 'go');
  assert.deepEqual(sim.got(), [['int', 120], ['float', 120.5], ['set', 'a b', 3], ['list', 1.5, 2], ['list', 4, 5]]);
});

test('js dispatch: function by name, msg_int/msg_float fallbacks, list, anything + messagename, local functions are private', () => {
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { script:
    'var log = []; function foo(a, b) { log.push("foo " + a + " " + b); } function msg_int(v) { log.push("int " + v); }' +
    'function anything() { log.push("anything " + messagename + " " + arrayfromargs(arguments).join(",")); }' +
    'function secret() { log.push("secret"); } secret.local = 1;' });
  sim.send('j', 0, 'foo', 1, 'x');
  sim.send('j', 0, 2.75);                 // only msg_int: a float is truncated and passed to it
  sim.send('j', 0, 1, 2);                 // a list with no list(): anything
  sim.send('j', 0, 'secret');
  sim.send('j', 0, '/stage/pong', 'tok');
  assert.deepEqual(Array.from(sim.box('j').js.ctx.log), ['foo 1 x', 'int 2', 'anything list 1,2', 'anything /stage/pong tok']);
  assert.match(sim.posts.join('\n'), /function secret is private/);
});

test('a script exception is posted in the Max window and ends only that message', () => {
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { script: 'function boom() { undefined.x = 1; }' });
  sim.send('j', 0, 'boom');
  assert.match(sim.posts[0], /Javascript TypeError/);
});

test('trigger fires right to left; fan-out goes right to left by position, depth first', () => {
  const sim = withCollector([
    { id: 't', text: 't b l b', numinlets: 1, numoutlets: 3 },
    { id: 'left', maxclass: 'message', text: 'left', numinlets: 2, numoutlets: 1, patching_rect: [0, 0, 10, 10] },
    { id: 'right', maxclass: 'message', text: 'right', numinlets: 2, numoutlets: 1, patching_rect: [100, 0, 10, 10] },
  ], [['t', 0, 'left', 0], ['t', 0, 'right', 0], ['t', 1, 'collect', 0], ['t', 2, 'collect', 0], ['left', 0, 'collect', 0], ['right', 0, 'collect', 0]]);
  sim.send('t', 0, 7);
  assert.deepEqual(sim.got(), [['bang'], ['int', 7], ['right'], ['left']]);
});

test('route sends the rest of a matching message (a bang when nothing is left), the rest out of the right', () => {
  const sim = withCollector([{ id: 'r', text: 'route text osc', numinlets: 2, numoutlets: 3 }],
    [['r', 0, 'collect', 0], ['r', 1, 'collect', 0], ['r', 2, 'collect', 0]]);
  sim.send('r', 0, 'text', 'Genres:', 'Rock.');
  sim.send('r', 0, 'text');
  sim.send('r', 0, 'osc', '/stage/ping', 3);
  sim.send('r', 0, 'other', 1);
  assert.deepEqual(sim.got(), [['Genres:', 'Rock.'], ['bang'], ['/stage/ping', 3], ['other', 1]]);
});

test('prepend puts its words in front; a bang becomes the word bang', () => {
  const sim = withCollector([{ id: 'p', text: 'prepend prompt', numinlets: 1, numoutlets: 1 }], [['p', 0, 'collect', 0]]);
  sim.send('p', 0, 'a', 'b');
  sim.send('p', 0);
  sim.send('p', 0, 3);
  assert.deepEqual(sim.got(), [['prompt', 'a', 'b'], ['prompt', 'bang'], ['prompt', 3]]);
});

test('gate passes its right inlet only while open; delay bangs after its time, stop cancels it', () => {
  const sim = withCollector([{ id: 'g', text: 'gate', numinlets: 2, numoutlets: 1 }, { id: 'd', text: 'delay', numinlets: 2, numoutlets: 1 }],
    [['g', 0, 'collect', 0], ['d', 0, 'collect', 0]]);
  sim.send('g', 1, 'x');
  sim.send('g', 0, 1);
  sim.send('g', 1, 'y');
  sim.send('d', 1, 500);
  sim.send('d', 0);
  sim.advance(499);
  assert.deepEqual(sim.got(), [['y']]);
  sim.advance(1);
  assert.deepEqual(sim.got(), [['y'], ['bang']]);
  sim.send('d', 0);
  sim.send('d', 0, 'stop');
  sim.advance(1000);
  assert.deepEqual(sim.got(), [['y'], ['bang']]);
});

test('timepoint bangs when the playing transport reaches its tick (480 per quarter), not when stopped', () => {
  const sim = withCollector([{ id: 'tp', text: 'timepoint', numinlets: 1, numoutlets: 1 }], [['tp', 0, 'collect', 0]]);
  sim.live.ready = true;
  sim.send('tp', 0, 4 * 480);              // beat 4 = 2000 ms at 120 bpm
  sim.advance(5000);
  assert.deepEqual(sim.got(), []);
  sim.play();
  sim.advance(1999);
  assert.deepEqual(sim.got(), []);
  sim.advance(1);
  assert.deepEqual(sim.got(), [['bang']]);
  assert.equal(sim.clock.transport.beats, 4);
});

for (const emptyText of ['text', 'nothing']) test(`textedit (outputmode 1): "text" + the words; an empty field outputs ${emptyText === 'text' ? 'a bare text' : 'nothing'}`, () => {
  const sim = withCollector([{ id: 'te', maxclass: 'textedit', outputmode: 1, numinlets: 1, numoutlets: 4 }], [['te', 0, 'collect', 0]], { emptyText });
  sim.send('te', 0);
  sim.type('te', 'Genres: Rock.');
  sim.send('te', 0);
  assert.deepEqual(sim.got(), [...(emptyText === 'text' ? [['text']] : []), ['text', 'Genres:', 'Rock.']]);
});

test('live parameters: a number sets and outputs (clipped, int for Int/Enum), set is silent, initial values load', () => {
  const param = (id, type, extra) => ({ id, maxclass: 'live.numbox', numinlets: 1, numoutlets: 2, varname: id,
    saved_attribute_attributes: { valueof: Object.assign({ parameter_type: type }, extra) } });
  const sim = withCollector([param('n', 1, { parameter_mmin: 1, parameter_mmax: 4, parameter_initial_enable: 1, parameter_initial: [2] }), param('f', 0, {})],
    [['n', 0, 'collect', 0], ['f', 0, 'collect', 0]]);
  sim.start();
  sim.send('n', 0, 9.4);
  sim.send('n', 0, 'set', 3);
  sim.click('f', 0.5);
  assert.deepEqual(sim.got(), [['int', 2], ['int', 4], ['float', 0.5]]);
});

test('umenu: clear/append/set build it silently; a click outputs the index', () => {
  const sim = withCollector([{ id: 'u', maxclass: 'umenu', numinlets: 1, numoutlets: 3 }], [['u', 0, 'collect', 0]]);
  sim.send('u', 0, 'append', '1 My Track');
  sim.send('u', 0, 'append', '4 Stem');
  sim.send('u', 0, 'set', 1);
  assert.deepEqual(sim.got(), []);
  assert.deepEqual(sim.box('u').items, ['1 My Track', '4 Stem']);
  sim.click('u', 0);
  assert.deepEqual(sim.got(), [['int', 0]]);
});

test('OSC 1.0: strings padded to 4 bytes, big-endian int32/float32, round trip', () => {
  const buf = osc.encode('/stage/ping', [{ type: 's', value: 'abc' }, { type: 'i', value: 7 }, { type: 'f', value: 1.5 }]);
  assert.equal(buf.toString('latin1', 0, 12), '/stage/ping\0');
  assert.equal(buf.toString('latin1', 12, 16), ',sif');
  assert.equal(buf.length, 12 + 8 + 4 + 4 + 4);
  assert.deepEqual(osc.decode(buf), { address: '/stage/ping', args: [{ type: 's', value: 'abc' }, { type: 'i', value: 7 }, { type: 'f', value: 1.5 }] });
  assert.deepEqual(osc.decode(osc.encode('/x', [{ type: 's', value: '' }])).args, [{ type: 's', value: '' }]);
});

for (const splitsSpaces of [false, true]) test(`LiveAPI (splitsSpaces=${splitsSpaces}): quoted names; call() with a spaced path ${splitsSpaces ? 'fails unless double-quoted' : 'works as one symbol'}`, () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sim live '));
  const wav = path.join(dir, 'a take.wav');
  require('../sim/objects').writeWav(wav, [0, 0], 1, 44100, 16);
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { os: 'posix', splitsSpaces, script:
    'var r = {}; function go(p) { var t = new LiveAPI(null, "live_set tracks 3"); t.set("name", "My Track");' +
    ' r.name = t.get("name"); r.plain = t.call("create_audio_clip", p, 4); r.quoted = t.call("create_audio_clip", "\\"" + p + "\\"", 8); }' });
  sim.live.ready = true;
  sim.box('j').js.receive(0, { sel: 'go', args: [A.sym(wav)] });
  const r = JSON.parse(JSON.stringify(sim.box('j').js.ctx.r));
  assert.equal(sim.live.set.tracks[3].name, splitsSpaces ? 'My' : 'My Track');    // set() splits the same way
  assert.deepEqual(r.name, [splitsSpaces ? 'My' : '"My Track"']);
  if (splitsSpaces) {
    assert.equal(r.plain, undefined);
    assert.match(sim.posts.join('\n'), /Invalid syntax/);
    assert.equal(r.quoted[0], 'id');
  } else {
    assert.equal(r.plain[0], 'id');
    assert.equal(r.quoted, undefined);       // the quotes are part of the symbol: no such file
  }
  fs.rmSync(dir, { recursive: true });
});

test('LiveAPI before live.thisdevice: id 0 and the Max window says why', () => {
  const sim = patch([{ id: 'j', text: 'js test.js', numinlets: 1, numoutlets: 1 }], [], { script: 'var api = new LiveAPI(null, "live_set");' });
  assert.equal(sim.box('j').js.ctx.api.id, '0');
  assert.match(sim.posts[0], /Live API is not initialized/);
});

test('timepoint: the playhead standing on the point or jumping onto it (a loop) does not bang it; moving through it does', () => {
  const sim = withCollector([{ id: 'tp', text: 'timepoint', numinlets: 1, numoutlets: 1 }], [['tp', 0, 'collect', 0]]);
  sim.live.ready = true;
  Object.assign(sim.live.set, { loop: 1, loop_start: 0, loop_length: 8 });
  sim.send('tp', 0, 0);                    // the loop start
  sim.locate(6);
  sim.play();
  sim.advance(1000);                       // beat 6 -> 8, jump back to 0
  assert.equal(sim.clock.transport.beats, 0);
  sim.advance(3000);
  assert.deepEqual(sim.got(), []);
  assert.equal(sim.clock.transport.beats, 6);
  sim.send('tp', 0, 1);                    // one tick past the loop start: reached after the next jump
  sim.advance(1001);                       // beat 6 -> 8, jump to 0, 1 ms on (a tick is 1.04 ms at 120 bpm)
  assert.deepEqual(sim.got(), []);
  sim.advance(1);
  assert.deepEqual(sim.got(), [['bang']]);
});

test('node.script runs the frozen script in Node: handlers get the message, maxApi.outlet leaves the left outlet', async () => {
  const sim = withCollector([{ id: 'n', text: 'node.script echo.js @autostart 1', numinlets: 1, numoutlets: 2 }], [['n', 0, 'collect', 0]], {
    files: { 'echo.js': "const m = require('max-api'); m.addHandler('hello', (a, b) => m.outlet('hi', a + b, 'x y'));" } });
  try {
    sim.send('n', 0, 'hello', 1, 2);
    sim.send('n', 0, 'nobody');
    await sim.waitFor(() => sim.got().length === 1 && sim.posts.length === 1, 10000, 'the script\'s answer');
    assert.deepEqual(sim.got(), [['hi', 3, 'x y']]);
    assert.match(sim.posts[0], /no handler for message nobody/);
  } finally {
    sim.close();
  }
});

test('sfplay~: open + 1 plays the file; the right outlet bangs when it ends or is halted; seek plays from there', () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sim sfplay '));
  const wav = path.join(dir, 'a.wav');
  require('../sim/objects').writeWav(wav, new Array(44100).fill(0), 1, 44100, 16);   // 1 s
  const sim = withCollector([{ id: 'p', text: 'sfplay~ 2', numinlets: 2, numoutlets: 3 }, { id: 'db', text: 'dbtoa', numinlets: 1, numoutlets: 1 }],
    [['p', 2, 'collect', 0], ['db', 0, 'collect', 0]], { os: 'posix' });
  sim.send('p', 0, 'open', wav);
  sim.send('p', 0, 1);
  sim.advance(999);
  assert.deepEqual(sim.got(), []);
  sim.advance(1);
  assert.deepEqual(sim.got(), [['bang']]);
  sim.send('p', 0, 'seek', 600);
  sim.advance(100);
  sim.send('p', 0, 0);
  assert.equal(sim.box('p').playing, false);
  sim.advance(0);
  assert.deepEqual(sim.got(), [['bang'], ['bang']]);
  sim.send('db', 0, -20);
  assert.ok(Math.abs(sim.got()[2][1] - 0.1) < 1e-12);
  fs.rmSync(dir, { recursive: true });
});

test('pattr: set stores without output, a value is stored and output, bang outputs the stored value', () => {
  const sim = withCollector([{ id: 's', text: 'pattr keep @parameter_enable 1', numinlets: 1, numoutlets: 3 }], [['s', 0, 'collect', 0]]);
  sim.send('s', 0, 'set', 'abc');
  assert.deepEqual(sim.got(), []);
  sim.send('s', 0);
  sim.send('s', 0, 'other', 2);
  assert.deepEqual(sim.got(), [['abc'], ['other', 2]]);
});

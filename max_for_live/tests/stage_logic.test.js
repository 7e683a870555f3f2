'use strict';
// Tests of src/stage_logic.js (run with: node --test max_for_live/tests/).
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');

const L = require(path.join(__dirname, '..', 'src', 'stage_logic.js'));

const s = (value) => ({ type: 's', value });
const i = (value) => ({ type: 'i', value });
const f = (value) => ({ type: 'f', value });

// -- messages --------------------------------------------------------------------------------------

test('ping, status, cancel and tempo messages carry the protocol types', () => {
  assert.deepEqual(L.pingMessage('tok-1'), { address: '/stage/ping', args: [s('tok-1')] });
  assert.deepEqual(L.pingMessage(), { address: '/stage/ping', args: [] });
  assert.deepEqual(L.statusMessage(), { address: '/stage/status', args: [] });
  assert.deepEqual(L.cancelMessage('job-1'), { address: '/stage/cancel', args: [s('job-1')] });
  assert.deepEqual(L.tempoMessage(120, 4, 4), { address: '/stage/tempo', args: [f(120), i(4), i(4)] });
  assert.deepEqual(L.tempoMessage(97.5, 6, 8), { address: '/stage/tempo', args: [f(97.5), i(6), i(8)] });
});

test('tempo messages refuse what the daemon would refuse', () => {
  for (const [bpm, num, den] of [[29.9, 4, 4], [300.1, 4, 4], [NaN, 4, 4], [120, 0, 4], [120, 33, 4], [120, 4, 3], [120, 4.5, 4]]) {
    assert.throws(() => L.tempoMessage(bpm, num, den), (e) => e instanceof L.LogicError && e.code === 'bad_tempo', `${bpm} ${num}/${den}`);
  }
});

const baseRequest = {
  jobId: 'live-20250314-154502-abcd-1', contextPath: '/Users/me/Library/Application Support/stage-bridge/bounces/live.wav',
  instrument: 'drums', bars: 4, bpm: 120, beatsPerBar: 4, beatUnit: 4, offset: 0, prompt: '', takes: 1, mode: 'mix+click',
};

test('generate: every argument with its OSC type, in the documented order', () => {
  const msg = L.generateMessage(baseRequest);
  assert.equal(msg.address, '/stage/generate');
  assert.deepEqual(msg.args, [
    s(baseRequest.jobId), s(baseRequest.contextPath), s('drums'), i(4),
    s('bpm'), f(120), s('beats_per_bar'), i(4), s('beat_unit'), i(4), s('offset'), f(0),
    s('takes'), i(1), s('context_mode'), s('mix+click'), s('scores'), i(1),
  ]);
});

// Max may drop an empty symbol on its way from [js] to [udpsend] (issue 13, U6), so "no context" is the
// placeholder "-" that the daemon reads as empty (docs/protocol.md, protocol.NO_CONTEXT).
test('generate: click mode sends the no-context placeholder even if a path is given', () => {
  const msg = L.generateMessage({ ...baseRequest, mode: 'click', takes: 3 });
  assert.deepEqual(msg.args[1], s('-'));
  assert.deepEqual(msg.args.slice(-6), [s('takes'), i(3), s('context_mode'), s('click'), s('scores'), i(1)]);
});

test('generate: the prompt keeps spaces and quotes, loses line breaks and outer blanks', () => {
  const prompt = 'Genres: "Post-Rock", it\'s  loud';
  const msg = L.generateMessage({ ...baseRequest, prompt: '  ' + prompt + '\n' });
  assert.deepEqual(msg.args.slice(-2), [s('prompt'), s(prompt)]);
  assert.equal(L.cleanPrompt('one\ntwo\r\nthree\tfour'), 'one two three four');
  assert.equal(L.generateMessage({ ...baseRequest, prompt: '   ' }).args.length, 18, 'an empty prompt is not sent');
});

test('generate: a seed is sent as an int when given', () => {
  assert.deepEqual(L.generateMessage({ ...baseRequest, seed: 42 }).args.slice(-2), [s('seed'), i(42)]);
});

test('generate: refuses what the daemon would refuse, with the daemon\'s error code', () => {
  const cases = [
    [{ jobId: 'has space' }, 'bad_job_id'], [{ jobId: '' }, 'bad_job_id'], [{ jobId: 'x'.repeat(65) }, 'bad_job_id'],
    [{ bars: 0 }, 'bad_bars'], [{ bars: 513 }, 'bad_bars'], [{ bars: 1.5 }, 'bad_bars'],
    [{ bpm: 10 }, 'bad_tempo'], [{ beatUnit: 5 }, 'bad_tempo'], [{ takes: 9 }, 'bad_option'], [{ takes: 0 }, 'bad_option'],
    [{ offset: -1 }, 'bad_option'], [{ prompt: 'x'.repeat(501) }, 'bad_option'], [{ mode: 'loud' }, 'bad_option'],
    [{ mode: 'mix', contextPath: '' }, 'bad_request'], [{ instrument: 'Drums!' }, 'bad_instrument'], [{ seed: -1 }, 'bad_option'],
  ];
  for (const [change, code] of cases) {
    assert.throws(() => L.generateMessage({ ...baseRequest, ...change }), (e) => e instanceof L.LogicError && e.code === code,
      JSON.stringify(change));
  }
  assert.doesNotThrow(() => L.generateMessage({ ...baseRequest, prompt: 'x'.repeat(500) }));
});

test('wire form: what Max puts on the wire (whole floats become ints)', () => {
  const wire = L.wireMessage(L.generateMessage({ ...baseRequest, bpm: 120, offset: 0 }));
  assert.deepEqual(wire.args[5], i(120));
  assert.deepEqual(wire.args[11], i(0));
  assert.deepEqual(L.wireMessage(L.tempoMessage(97.5, 4, 4)).args, [f(97.5), i(4), i(4)]);
  assert.deepEqual(L.toAtoms(L.tempoMessage(97.5, 7, 8)), ['/stage/tempo', 97.5, 7, 8]);
});

// -- timing ------------------------------------------------------------------------------------------

test('bar length: beats_per_bar x 4 / beat_unit quarter notes; seconds at the tempo', () => {
  assert.equal(L.barBeats(4, 4), 4);
  assert.equal(L.barBeats(3, 4), 3);
  assert.equal(L.barBeats(6, 8), 3);
  assert.equal(L.barBeats(7, 8), 3.5);
  assert.equal(L.barBeats(2, 2), 4);
  assert.equal(L.barBeats(5, 16), 1.25);
  assert.equal(L.barSeconds(120, 4, 4), 2);
  assert.equal(L.barSeconds(90, 6, 8), 2);
  assert.equal(L.recordingSeconds(4, 120, 4, 4), 8);
  assert.equal(L.recordingSeconds(8, 100, 7, 8), 8 * 3.5 * 0.6);
});

test('recording length in samples rounds like the daemon (nearest, ties up)', () => {
  assert.equal(L.recordingSamples(4, 120, 4, 4, 44100), 352800);
  assert.equal(L.recordingSamples(1, 120, 4, 4, 48000), 96000);
  assert.equal(L.recordingSamples(1, 7 * 60, 1, 4, 44100), 6300);           // exactly 1/7 s
  assert.equal(L.recordingSamples(1, 128, 4, 4, 44100), 82688);             // 82687.5 -> up
  assert.equal(L.recordingSamples(3, 97, 6, 8, 44100), Math.floor(3 * 3 * 60 / 97 * 44100 + 0.5));
});

test('next bar line: the first bar line at least the lead time ahead', () => {
  assert.equal(L.nextBarLine(0, 4, 4, 0), 0);
  assert.equal(L.nextBarLine(0, 4, 4, 0.6), 4);
  assert.equal(L.nextBarLine(3.2, 4, 4, 0.6), 4);
  assert.equal(L.nextBarLine(3.5, 4, 4, 0.6), 8);
  assert.equal(L.nextBarLine(8, 4, 4, 0), 8);
  assert.equal(L.nextBarLine(8.0000000001, 4, 4, 0), 8, 'float noise on a bar line stays on it');
  assert.equal(L.nextBarLine(2.9, 6, 8, 0), 3);
  assert.equal(L.nextBarLine(-1, 4, 4, 0), 0);
  assert.equal(L.barNumber(0, 4, 4), 1);
  assert.equal(L.barNumber(8, 4, 4), 3);
  assert.equal(L.barNumber(9, 6, 8), 4);
});

test('recording plan: next bar line while no loop applies', () => {
  const plan = L.planRecording({ bars: 4, bpm: 120, num: 4, den: 4, songBeats: 3.2, loopOn: false, leadSeconds: 0.3, tailMs: 250 });
  assert.equal(plan.source, 'bar');
  assert.equal(plan.startBeats, 4);          // 3.2 + 0.6 beats of lead -> bar 2 at beat 4
  assert.equal(plan.startTicks, 1920);
  assert.equal(plan.startBar, 2);
  assert.equal(plan.lengthBeats, 16);
  assert.equal(plan.seconds, 8);
  assert.equal(plan.stopAfterMs, 8250);
  // past the loop's end the loop does not apply
  const after = L.planRecording({ bars: 1, bpm: 120, num: 4, den: 4, songBeats: 40, loopOn: true, loopStart: 16, loopLength: 16 });
  assert.equal(after.source, 'bar');
  assert.equal(after.startBeats, 44);
});

test('recording plan: the loop start while Live loops', () => {
  const inside = L.planRecording({ bars: 4, bpm: 120, num: 4, den: 4, songBeats: 20, loopOn: true, loopStart: 16, loopLength: 16 });
  assert.equal(inside.source, 'loop');
  assert.equal(inside.startBeats, 16);
  assert.equal(inside.startTicks, 16 * 480 + 1, 'after the jump back, one tick later');
  assert.equal(inside.startBar, 5);
  assert.equal(inside.loopBars, 4);
  assert.equal(inside.loopIsWholeBars, true);
  const before = L.planRecording({ bars: 8, bpm: 120, num: 4, den: 4, songBeats: 10, loopOn: true, loopStart: 16, loopLength: 16 });
  assert.equal(before.startTicks, 16 * 480, 'reached going forward: exactly on it');
  assert.equal(before.lengthBeats, 32, 'a shorter loop repeats inside the recording');
  const ragged = L.planRecording({ bars: 2, bpm: 120, num: 4, den: 4, songBeats: 1, loopOn: true, loopStart: 0, loopLength: 6 });
  assert.equal(ragged.loopBars, 1.5);
  assert.equal(ragged.loopIsWholeBars, false);
});

// -- paths -------------------------------------------------------------------------------------------

test('Max paths <-> native paths on macOS (what conformpath does)', () => {
  const mac = 'macintosh';
  assert.equal(L.maxToNative('Macintosh HD:/Users/x/a.wav', mac, 'Macintosh HD'), '/Users/x/a.wav');
  assert.equal(L.maxToNative('Macintosh HD:/Users/x/a.wav', mac, ''), '/Users/x/a.wav');
  assert.equal(L.maxToNative('Data:/Songs/a b.wav', mac, 'Macintosh HD'), '/Volumes/Data/Songs/a b.wav');
  assert.equal(L.maxToNative('Data:', mac, 'Macintosh HD'), '/Volumes/Data');
  assert.equal(L.maxToNative('/Users/x/a.wav', mac, 'Macintosh HD'), '/Users/x/a.wav');
  assert.equal(L.nativeToMax('/Users/x/a.wav', mac, 'Macintosh HD'), 'Macintosh HD:/Users/x/a.wav');
  assert.equal(L.nativeToMax('/Volumes/Data/Songs/a.wav', mac, 'Macintosh HD'), 'Data:/Songs/a.wav');
  assert.equal(L.nativeToMax('/Users/x/a.wav', mac, ''), '/Users/x/a.wav');
  for (const p of ['/Users/x/Library/Application Support/stage-bridge/bounces/a.wav', '/Volumes/My Disk/b.wav', '/tmp/c.wav']) {
    assert.equal(L.maxToNative(L.nativeToMax(p, mac, 'Macintosh HD'), mac, 'Macintosh HD'), p);
  }
});

test('Max paths <-> native paths on Windows', () => {
  const win = 'windows';
  assert.equal(L.maxToNative('C:/Users/x/AppData/Local/stage-bridge/bounces/a.wav', win), 'C:\\Users\\x\\AppData\\Local\\stage-bridge\\bounces\\a.wav');
  assert.equal(L.nativeToMax('C:\\Users\\x\\a.wav', win), 'C:/Users/x/a.wav');
  assert.equal(L.maxToNative('//server/share/a.wav', win), '\\\\server\\share\\a.wav');
  assert.equal(L.nativeToMax('\\\\server\\share\\a.wav', win), '//server/share/a.wav');
  for (const p of ['D:\\Music\\My Songs\\a.wav', 'C:\\Users\\Bob\\AppData\\Local\\stage-bridge\\bounces\\x.wav']) {
    assert.equal(L.maxToNative(L.nativeToMax(p, win), win), p);
  }
});

test('the path Live\'s API wants, names and URLs', () => {
  assert.equal(L.toLiveApiPath('/Users/x/a.wav', 'macintosh', 'Macintosh HD'), '/Volumes/Macintosh HD/Users/x/a.wav');
  assert.equal(L.toLiveApiPath('/Volumes/Data/a.wav', 'macintosh', 'Macintosh HD'), '/Volumes/Data/a.wav');
  assert.equal(L.toLiveApiPath('/Users/x/a.wav', 'macintosh', ''), '/Users/x/a.wav');
  assert.equal(L.toLiveApiPath('C:/Users/x/a.wav', 'windows'), 'C:\\Users\\x\\a.wav');
  assert.equal(L.joinNative('/a/b/', 'c.wav', 'macintosh'), '/a/b/c.wav');
  assert.equal(L.joinNative('C:\\a', 'c.wav', 'windows'), 'C:\\a\\c.wav');
  assert.equal(L.basename('/a/b/c.drums.120bpm.take1.wav'), 'c.drums.120bpm.take1.wav');
  assert.equal(L.basename('C:\\a\\b.wav'), 'b.wav');
  assert.equal(L.dirname('/a/b/c.wav'), '/a/b');
  assert.equal(L.dirname('/c.wav'), '/');
  assert.equal(L.dirname('C:\\a\\c.wav'), 'C:\\a');
  assert.equal(L.dirname('C:\\c.wav'), 'C:\\');
  assert.equal(L.fileUrl('/Users/x/My Songs/#1?.wav', 'macintosh'), 'file:///Users/x/My%20Songs/%231%3F.wav');
  assert.equal(L.fileUrl('C:\\Users\\x\\a b', 'windows'), 'file:///C:/Users/x/a%20b');
});

test('home folder guess and the daemon\'s default folders (stage_bridge/paths.py)', () => {
  const dev = 'Macintosh HD:/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/Max Audio Effect/STAGE Bridge.amxd';
  assert.equal(L.guessHome(dev, 'macintosh', 'Macintosh HD'), '/Users/alice');
  assert.equal(L.guessHome('C:/Users/Bob/Documents/Ableton/User Library/STAGE Bridge.amxd', 'windows'), 'C:\\Users\\Bob');
  assert.equal(L.guessHome('Data:/Devices/STAGE Bridge.amxd', 'macintosh', 'Macintosh HD'), '');
  assert.equal(L.guessHome('', 'macintosh'), '');
  assert.equal(L.defaultDaemonHome('macintosh', '/Users/alice'), '/Users/alice/Library/Application Support/stage-bridge');
  assert.equal(L.defaultDaemonHome('windows', 'C:\\Users\\Bob'), 'C:\\Users\\Bob\\AppData\\Local\\stage-bridge');
  assert.equal(L.defaultDaemonHome('posix', '/home/carol'), '/home/carol/.local/share/stage-bridge');
  assert.equal(L.defaultDaemonHome('macintosh', ''), '');
});

test('the "Daemon folder" setting, however it is typed', () => {
  const mac = ['macintosh', 'Macintosh HD', '/Users/alice'];
  assert.equal(L.bouncesFromSetting('', ...mac), '');
  assert.equal(L.bouncesFromSetting('~/stage', ...mac), '/Users/alice/stage/bounces');
  assert.equal(L.bouncesFromSetting('"/x/y/"', ...mac), '/x/y/bounces');
  assert.equal(L.bouncesFromSetting('/x/y/bounces', ...mac), '/x/y/bounces');
  assert.equal(L.bouncesFromSetting('Macintosh HD:/x/stage-bridge', ...mac), '/x/stage-bridge/bounces');
  assert.equal(L.bouncesFromSetting('C:/Users/Bob/stage', 'windows', '', 'C:\\Users\\Bob'), 'C:\\Users\\Bob\\stage\\bounces');
});

// -- names -------------------------------------------------------------------------------------------

test('job and bounce names are valid job ids, unique per device and counter', () => {
  const date = new Date(2025, 2, 14, 15, 45, 2);
  assert.equal(L.timestamp(date), '20250314-154502');
  const a = L.jobName('live', date, 'k3f9', 1);
  assert.equal(a, 'live-20250314-154502-k3f9-1');
  assert.notEqual(a, L.jobName('live', date, 'k3f9', 2));
  assert.equal(L.bounceFileName(a), a + '.wav');
  let n = 0;
  const fixed = () => [0.0, 0.5, 0.99, 0.25][n++ % 4];
  assert.equal(L.randomTag(fixed), 'as9i');
  assert.match(L.randomTag(), /^[a-z2-9]{4}$/);
  assert.throws(() => L.jobName('bad name', date, 'x', 1), L.LogicError);
});

// -- replies -----------------------------------------------------------------------------------------

test('replies are parsed into typed objects', () => {
  assert.deepEqual(L.parseReply('/stage/pong', ['t']), { kind: 'pong', token: 't' });
  assert.deepEqual(L.parseReply('/stage/pong', []), { kind: 'pong', token: '' });
  assert.deepEqual(L.parseReply('/stage/job/accepted', ['j', 2]), { kind: 'accepted', jobId: 'j', queuePosition: 2 });
  assert.deepEqual(L.parseReply('/stage/job/progress', ['j', 41.5]), { kind: 'progress', jobId: 'j', percent: 41.5 });
  assert.equal(L.parseReply('/stage/job/progress', ['j', 140]).percent, 100);
  assert.equal(L.parseReply('/stage/job/progress', ['j', 'x']).percent, 0);
  assert.deepEqual(L.parseReply('/stage/job/done', ['j', '/a/1.wav', '/a/2.wav']),
    { kind: 'done', jobId: 'j', paths: ['/a/1.wav', '/a/2.wav'], fits: [null, null] });
  assert.deepEqual(L.parseReply('/stage/job/error', ['j', 'no_tempo', 'say it']), { kind: 'error', jobId: 'j', code: 'no_tempo', message: 'say it' });
  assert.deepEqual(L.parseReply('/stage/job/cancelled', ['j']), { kind: 'cancelled', jobId: 'j' });
  const st = L.parseReply('/stage/status', ['idle', 0, 120, 'osc', 'cpu', 'drums=stage-drums,bass=missing']);
  assert.equal(st.kind, 'status');
  assert.deepEqual(st.models, { drums: 'stage-drums', bass: 'missing' });
  assert.equal(st.bpm, 120);
  assert.deepEqual(L.parseReply('/stage/info', ['/h', '/h/bounces']), { kind: 'info', home: '/h', bounces: '/h/bounces', web: '' });
  assert.equal(L.parseReply('/stage/info', ['/h', '/h/bounces', '-']).web, '');
  assert.equal(L.parseReply('/stage/info', ['/h', '/h/bounces', 'http://127.0.0.1:9002/']).web, 'http://127.0.0.1:9002/');
  assert.equal(L.parseReply('/other', []).kind, 'unknown');
});

test('every error code has plain words; unknown codes still say something useful', () => {
  const codes = ['bad_request', 'bad_job_id', 'duplicate_job', 'bad_instrument', 'bad_bars', 'bad_tempo', 'bad_option',
    'no_tempo', 'forbidden_path', 'file_missing', 'not_audio', 'empty_audio', 'non_finite_audio', 'queue_full',
    'unknown_job', 'weights_missing', 'out_of_memory', 'output_not_writable', 'disk_full', 'too_large', 'engine_error'];
  assert.deepEqual(Object.keys(L.ERROR_TEXTS).sort(), codes.slice().sort());
  for (const code of codes) {
    const text = L.errorText(code);
    assert.ok(text.length > 20 && !text.includes('_'), `${code}: ${text}`);
  }
  assert.match(L.errorText('new_code'), /new_code/);
  assert.match(L.errorText('weights_missing'), /stage-bridge weights/);
});

// -- the state machine -------------------------------------------------------------------------------

const DEVICE = 'Macintosh HD:/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/Max Audio Effect/STAGE Bridge.amxd';
const BOUNCES = '/Users/alice/Library/Application Support/stage-bridge/bounces';

function device(options = {}) {
  return new L.Controller({ os: 'macintosh', bootVolume: 'Macintosh HD', devicePath: DEVICE, tag: 'tst1', now: 1000, ...options });
}

function sent(actions) {
  return actions.filter((a) => a.type === 'send').map((a) => a.message);
}

function connect(c, now = 1500) {
  c.dispatch({ type: 'tick', now });
  return c.dispatch({ type: 'osc', address: '/stage/pong', args: ['m4l-tst1-1'], now: now + 5 });
}

function liveTempo(c, bpm = 120, num = 4, den = 4) {
  c.dispatch({ type: 'live', key: 'num', value: num });
  c.dispatch({ type: 'live', key: 'den', value: den });
  return c.dispatch({ type: 'live', key: 'tempo', value: bpm });
}

test('a new device looks for the daemon; pings every tick', () => {
  const c = device();
  assert.equal(c.view().state, 'idle');
  assert.equal(c.view().connection, 'unknown');
  assert.match(c.view().status, /Looking for the stage-bridge daemon/);
  assert.deepEqual(sent(c.dispatch({ type: 'tick', now: 2000 })), [L.pingMessage('m4l-tst1-1')]);
  assert.deepEqual(sent(c.dispatch({ type: 'tick', now: 4000 })), [L.pingMessage('m4l-tst1-2')]);
  assert.equal(c.view().bouncesFolder, BOUNCES);
});

test('no answer -> disconnected, in plain words, and Generate says so (a device without its launcher)', () => {
  const c = device({ autoLaunch: false });
  c.dispatch({ type: 'tick', now: 7000 });
  const v = c.view();
  assert.equal(v.state, 'disconnected');
  assert.equal(v.connection, 'disconnected');
  assert.match(v.status, /Not connected: start the stage-bridge daemon.*9000/);
  assert.equal(v.canGenerate, false);
  c.dispatch({ type: 'set', key: 'sendPort', value: 9100 });
  c.dispatch({ type: 'generate', transport: {}, now: 7100 });
  assert.equal(c.view().state, 'error');
  assert.match(c.view().status, /9100/);
  // the daemon comes back: connected, the error is gone, tempo and status are (re)sent
  liveTempo(c);
  const actions = c.dispatch({ type: 'osc', address: '/stage/pong', args: ['m4l-tst1-1'], now: 8000 });
  assert.deepEqual(sent(actions), [L.tempoMessage(120, 4, 4), L.statusMessage(), L.infoMessage()]);
  assert.equal(c.view().state, 'idle');
  assert.equal(c.view().status, 'Connected. Ready.');
  c.dispatch({ type: 'tick', now: 12000 });
  assert.equal(c.view().connection, 'connected', 'heard 4 s ago: still connected');
  c.dispatch({ type: 'tick', now: 13100 });
  assert.equal(c.view().connection, 'disconnected');
});

test('tempo and meter are sent when they change, once per change, and only in range', () => {
  const c = device();
  connect(c);
  assert.deepEqual(sent(c.dispatch({ type: 'live', key: 'tempo', value: 120 })), [L.tempoMessage(120, 4, 4)]);
  assert.deepEqual(sent(c.dispatch({ type: 'live', key: 'tempo', value: 120 })), []);
  assert.deepEqual(sent(c.dispatch({ type: 'live', key: 'num', value: 6 })), [L.tempoMessage(120, 6, 4)]);
  assert.deepEqual(sent(c.dispatch({ type: 'live', key: 'den', value: 8 })), [L.tempoMessage(120, 6, 8)]);
  assert.deepEqual(sent(c.dispatch({ type: 'live', key: 'tempo', value: 999 })), [], 'out of range: not sent');
  c.dispatch({ type: 'generate', transport: {} });
  assert.equal(c.view().state, 'error');
  assert.match(c.view().status, /999 bpm/);
});

test('UI settings map menu indexes to values', () => {
  const c = device();
  c.dispatch({ type: 'set', key: 'instrumentIndex', value: 1 });
  c.dispatch({ type: 'set', key: 'barsIndex', value: 4 });
  c.dispatch({ type: 'set', key: 'takes', value: 7.2 });
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1.0 });
  c.dispatch({ type: 'set', key: 'targetIndex', value: 1 });
  c.dispatch({ type: 'set', key: 'prompt', value: '  Genres: Rock.\n' });
  assert.deepEqual(c.view().ui, { instrument: 'bass', bars: 16, prompt: 'Genres: Rock.', takes: 4, mode: 'click', home: '', target: 'session', launcher: '' });
  c.dispatch({ type: 'set', key: 'barsIndex', value: 9 });
  c.dispatch({ type: 'set', key: 'takes', value: 0 });
  assert.equal(c.view().ui.bars, 16, 'an index out of range changes nothing');
  assert.equal(c.view().ui.takes, 1);
});

// An empty [textedit] reaches the script either as `KEY bang` ([route text] on a bare `text`) or as `KEY`
// with nothing after it; both mean an empty field, never the word "bang" (issue 13, U1).
for (const empty of ['bang', '', undefined]) test(`an empty text field (${JSON.stringify(empty)}) clears prompt and home`, () => {
  const c = device();
  c.dispatch({ type: 'set', key: 'prompt', value: 'Genres: Rock.' });
  c.dispatch({ type: 'set', key: 'home', value: '/srv/stage' });
  c.dispatch({ type: 'set', key: 'prompt', value: empty });
  c.dispatch({ type: 'set', key: 'home', value: empty });
  assert.equal(c.view().ui.prompt, '');
  assert.equal(c.view().ui.home, '');
  assert.equal(c.bouncesFolder(), BOUNCES, 'an empty home falls back to the guess');
});

test('click mode: sent at once, then accepted / progress / done drive the view', () => {
  const c = device();
  connect(c);
  liveTempo(c, 120);
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  c.dispatch({ type: 'set', key: 'barsIndex', value: 0 });
  const actions = c.dispatch({ type: 'generate', transport: { songBeats: 5, playing: true }, date: new Date(2025, 0, 2, 3, 4, 5).getTime() });
  const [msg] = sent(actions);
  const id = 'click-20250102-030405-tst1-1';
  assert.deepEqual(msg, L.generateMessage({ jobId: id, contextPath: '', instrument: 'drums', bars: 1, bpm: 120, beatsPerBar: 4,
    beatUnit: 4, offset: 0, prompt: '', takes: 1, mode: 'click' }));
  assert.equal(actions.filter((a) => a.type === 'recorder').length, 0, 'nothing to record');
  assert.equal(c.view().state, 'generating');
  assert.equal(c.view().status, 'Sent to the daemon...');
  assert.equal(c.view().canCancel, true);
  c.dispatch({ type: 'osc', address: '/stage/job/accepted', args: [id, 2] });
  assert.equal(c.view().status, 'Queued: 2 jobs ahead.');
  c.dispatch({ type: 'osc', address: '/stage/job/progress', args: [id, 0] });
  c.dispatch({ type: 'osc', address: '/stage/job/progress', args: [id, 45.4] });
  assert.equal(c.view().progress, 45);
  assert.equal(c.view().status, 'Generating drums... 45%');
  c.dispatch({ type: 'osc', address: '/stage/job/progress', args: ['someone-else', 90] });
  assert.equal(c.view().progress, 45, 'another job\'s progress is ignored');
  const out = '/Users/alice/Library/Application Support/stage-bridge/outbox/';
  c.dispatch({ type: 'osc', address: '/stage/job/done', args: [id, out + id + '.drums.120bpm.take1.wav'] });
  const v = c.view();
  assert.equal(v.state, 'done');
  assert.equal(v.progress, 100);
  assert.deepEqual(v.results, [id + '.drums.120bpm.take1.wav']);
  assert.equal(v.canInsert, true);
  assert.match(v.status, /^Done: 1 take\. Pick one, then Insert/);
  assert.equal(c.done.anchorBeats, 8, 'the next bar line after beat 5');
});

test('mix+click while playing: arm at the next bar line, record, then send the bounce', () => {
  const c = device();
  connect(c);
  liveTempo(c, 100, 6, 8);
  c.dispatch({ type: 'set', key: 'barsIndex', value: 2 });   // 4 bars
  c.dispatch({ type: 'set', key: 'prompt', value: 'Moods: calm.' });
  const date = new Date(2025, 5, 6, 7, 8, 9).getTime();
  const actions = c.dispatch({ type: 'generate', transport: { songBeats: 10.2, playing: true, loopOn: false }, date });
  const id = 'live-20250606-070809-tst1-1';
  const bounce = BOUNCES + '/' + id + '.wav';
  assert.deepEqual(actions, [
    { type: 'recorder', command: 'open', path: 'Macintosh HD:' + bounce, nativePath: bounce },
    { type: 'stopAfter', ms: Math.round(4 * 3 * 0.6 * 1000 + 250) },
    { type: 'arm', ticks: 12 * 480 },
    { type: 'gate', open: true },
  ]);
  let v = c.view();
  assert.equal(v.state, 'waiting');
  assert.equal(v.status, 'Recording 4 bars starts at bar 5...');
  assert.equal(v.bounce, bounce);
  assert.deepEqual(c.dispatch({ type: 'recordStarted' }), [{ type: 'gate', open: false }]);
  assert.equal(c.view().state, 'recording');
  assert.equal(c.view().status, 'Recording 4 bars from bar 5...');
  assert.deepEqual(c.dispatch({ type: 'generate', transport: {} }), [], 'busy: a second Generate is ignored');
  assert.deepEqual(c.dispatch({ type: 'recordStopped' }), [{ type: 'schedule', afterMs: 300, event: { type: 'bounceReady' } }]);
  const [msg] = sent(c.dispatch({ type: 'bounceReady' }));
  assert.deepEqual(msg, L.generateMessage({ jobId: id, contextPath: bounce, instrument: 'drums', bars: 4, bpm: 100,
    beatsPerBar: 6, beatUnit: 8, offset: 0, prompt: 'Moods: calm.', takes: 1, mode: 'mix+click' }));
  v = c.view();
  assert.equal(v.state, 'generating');
  c.dispatch({ type: 'osc', address: '/stage/job/done', args: [id, '/o/a.wav', '/o/b.wav'] });
  assert.equal(c.done.anchorBeats, 12, 'insert where the recording started');
});

test('generate while stopped waits for Play, and re-arms after a stop before the bar line', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  const first = c.dispatch({ type: 'generate', transport: { songBeats: 0, playing: false } });
  assert.deepEqual(first.map((a) => a.type), ['recorder']);
  assert.equal(c.view().status, 'Press Play in Live: recording starts at the next bar line.');
  const armed = c.dispatch({ type: 'live', key: 'playing', value: 1, transport: { songBeats: 0, playing: true } });
  assert.deepEqual(armed.map((a) => a.type), ['stopAfter', 'arm', 'gate']);
  assert.equal(armed[1].ticks, 4 * 480, 'bar 1 is too close (0.3 s lead): bar 2');
  assert.deepEqual(c.dispatch({ type: 'live', key: 'playing', value: 0 }), [{ type: 'gate', open: false }]);
  assert.equal(c.view().state, 'waiting');
  const again = c.dispatch({ type: 'live', key: 'playing', value: 1, transport: { songBeats: 33, playing: true } });
  assert.equal(again[1].ticks, 36 * 480);
});

test('the loop region while Live loops', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  const actions = c.dispatch({ type: 'generate', transport: { songBeats: 21, playing: true, loopOn: true, loopStart: 16, loopLength: 16 } });
  assert.deepEqual(actions.find((a) => a.type === 'arm'), { type: 'arm', ticks: 16 * 480 + 1 });
  assert.equal(c.view().status, 'Recording 4 bars starts at the loop start (bar 5)...');
});

test('the transport stopping mid-recording is an error in plain words; the recorder stops', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  c.dispatch({ type: 'generate', transport: { songBeats: 0, playing: true } });
  c.dispatch({ type: 'recordStarted' });
  const actions = c.dispatch({ type: 'live', key: 'playing', value: 0 });
  assert.deepEqual(actions, [{ type: 'gate', open: false }, { type: 'stopAfter', ms: 0, cancel: true }, { type: 'recorder', command: 'stop' }]);
  assert.equal(c.view().state, 'error');
  assert.match(c.view().status, /transport before all bars were recorded/);
  assert.equal(c.view().canGenerate, true);
});

test('cancel: before recording stops the recorder; while generating asks the daemon once', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  c.dispatch({ type: 'generate', transport: { songBeats: 0, playing: true } });
  assert.deepEqual(c.dispatch({ type: 'cancel' }).map((a) => a.type), ['gate', 'stopAfter', 'recorder']);
  assert.equal(c.view().state, 'idle');
  assert.equal(c.view().status, 'Cancelled.');
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  c.dispatch({ type: 'generate', transport: {} });
  const id = c.view().jobId;
  assert.deepEqual(sent(c.dispatch({ type: 'cancel' })), [L.cancelMessage(id)]);
  assert.deepEqual(c.dispatch({ type: 'cancel' }), [], 'asked once');
  assert.equal(c.view().status, 'Cancelling...');
  c.dispatch({ type: 'osc', address: '/stage/job/cancelled', args: [id] });
  assert.equal(c.view().state, 'idle');
  assert.equal(c.view().status, 'Cancelled.');
  assert.deepEqual(c.dispatch({ type: 'cancel' }), [], 'nothing to cancel');
});

test('daemon errors become plain words; the daemon\'s own text is kept as detail', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  c.dispatch({ type: 'generate', transport: {} });
  const id = c.view().jobId;
  c.dispatch({ type: 'osc', address: '/stage/job/error', args: [id, 'forbidden_path', '/x is outside'] });
  const v = c.view();
  assert.equal(v.state, 'error');
  assert.equal(v.status, L.ERROR_TEXTS.forbidden_path);
  assert.deepEqual(v.error, { code: 'forbidden_path', text: L.ERROR_TEXTS.forbidden_path, detail: '/x is outside' });
  assert.equal(v.canGenerate, true);
  // an error about no job (a refused /stage/tempo) is shown but changes no state
  const d = device();
  connect(d);
  d.dispatch({ type: 'osc', address: '/stage/job/error', args: ['', 'bad_tempo', 'bpm 20'] });
  assert.equal(d.view().state, 'idle');
  assert.equal(d.view().status, L.ERROR_TEXTS.bad_tempo);
});

test('the daemon\'s status warns about missing weights for the chosen instrument', () => {
  const c = device();
  connect(c);
  c.dispatch({ type: 'osc', address: '/stage/status', args: ['idle', 0, 0, 'none', 'cpu', 'drums=stage-drums,bass=missing'] });
  assert.equal(c.view().status, 'Connected. Ready.');
  c.dispatch({ type: 'set', key: 'instrumentIndex', value: 1 });
  assert.match(c.view().status, /bass model weights are missing/);
});

test('the control room\'s address (from /stage/info) shows when the device is ready, not otherwise', () => {
  const c = device();
  connect(c);
  c.dispatch({ type: 'osc', address: '/stage/info', args: ['/h', '/h/bounces', 'http://127.0.0.1:9002/'] });
  assert.equal(c.view().status, 'Connected. Ready. Takes in your browser: http://127.0.0.1:9002/');
  c.dispatch({ type: 'osc', address: '/stage/info', args: ['/h', '/h/bounces', '-'] });
  assert.equal(c.view().status, 'Connected. Ready.');
});

test('where bounces go: the setting, then the daemon (/stage/info), then the guess', () => {
  const c = device();
  assert.equal(c.bouncesFolder(), BOUNCES);
  c.dispatch({ type: 'osc', address: '/stage/info', args: ['/srv/stage', '/srv/stage/bounces'] });
  assert.equal(c.bouncesFolder(), '/srv/stage/bounces');
  c.dispatch({ type: 'set', key: 'home', value: ' /Volumes/Data/stage ' });
  assert.equal(c.bouncesFolder(), '/Volumes/Data/stage/bounces');
  const lost = device({ devicePath: 'Data:/Devices/STAGE Bridge.amxd' });
  connect(lost);
  liveTempo(lost);
  lost.dispatch({ type: 'generate', transport: { playing: true } });
  assert.equal(lost.view().state, 'error');
  assert.match(lost.view().status, /Daemon folder/);
  const asks = device({ askDaemonInfo: true });
  assert.deepEqual(sent(connect(asks)).map((m) => m.address), ['/stage/status', '/stage/info']);
});

test('insert: needs takes and a track; asks the glue to create the clip where recording started', () => {
  const c = device();
  connect(c);
  liveTempo(c);
  c.dispatch({ type: 'insert', trackIndex: 2 });
  assert.match(c.view().status, /Nothing to insert yet/);
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  c.dispatch({ type: 'generate', transport: { songBeats: 13 } });
  const id = c.view().jobId;
  c.dispatch({ type: 'osc', address: '/stage/job/done', args: [id, '/Users/alice/o/a.take1.wav', '/Users/alice/o/a.take2.wav'] });
  c.dispatch({ type: 'insert', trackIndex: -1 });
  assert.match(c.view().status, /Choose an audio track/);
  c.dispatch({ type: 'selectTake', index: 1 });
  c.dispatch({ type: 'selectTake', index: 5 });
  const actions = c.dispatch({ type: 'insert', trackIndex: 3 });
  assert.deepEqual(actions, [{ type: 'insertClip', target: 'arrangement', trackIndex: 3,
    path: '/Volumes/Macintosh HD/Users/alice/o/a.take2.wav', nativePath: '/Users/alice/o/a.take2.wav', startBeats: 16, name: 'a.take2' }]);
  c.dispatch({ type: 'insertResult', ok: true, message: 'Inserted a.take2.' });
  assert.match(c.view().status, /^Inserted a\.take2\. Done: 2 takes/);
  c.dispatch({ type: 'insertResult', ok: false, message: 'Live did not create the clip.' });
  assert.equal(c.view().status, 'Live did not create the clip.');
  assert.deepEqual(c.dispatch({ type: 'reveal' }), [{ type: 'reveal', url: 'file:///Users/alice/o' }]);
});

test('Windows: bounces under %LOCALAPPDATA%, Max path with forward slashes for the recorder', () => {
  const c = new L.Controller({ os: 'windows', devicePath: 'C:/Users/Bob/Documents/Ableton/User Library/STAGE Bridge.amxd', tag: 'win1', now: 0 });
  connect(c);
  c.dispatch({ type: 'osc', address: '/stage/pong', args: [] });
  liveTempo(c);
  const actions = c.dispatch({ type: 'generate', transport: { songBeats: 0, playing: false }, date: 0 });
  const open = actions[0];
  assert.match(open.nativePath, /^C:\\Users\\Bob\\AppData\\Local\\stage-bridge\\bounces\\live-\d{8}-\d{6}-win1-1\.wav$/);
  assert.equal(open.path, open.nativePath.replace(/\\/g, '/'));
});

// -- starting the daemon (stage_launcher.js) ----------------------------------------------------------

const launches = (actions) => actions.filter((a) => a.type === 'launch');

test('no answer after loading: the launcher is asked once to start the daemon on the device\'s ports', () => {
  const c = device();
  c.dispatch({ type: 'set', key: 'sendPort', value: 9100 });
  c.dispatch({ type: 'set', key: 'receivePort', value: 9101 });
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 3000 })), [], 'not yet: the daemon may simply be slow to answer');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 7000 })),
    [{ type: 'launch', sendPort: 9100, receivePort: 9101, path: '', hint: '/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/Max Audio Effect' }]);
  assert.equal(c.view().status, 'Starting the stage-bridge daemon... (loading its models can take a minute)');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 9000 })), [], 'never a second request while one is under way');
  assert.equal(launches(c.dispatch({ type: 'tick', now: 17100 })).length, 1,
    'no word from the launcher for 10 s (its Node process was still starting): asked again');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 19100 })), []);
  c.dispatch({ type: 'launcher', args: ['started', 4242] });
  assert.equal(c.view().launch.pid, 4242);
  assert.match(c.view().status, /^Starting the stage-bridge daemon/);
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 30000 })), [], 'started: it is loading its models');
  connect(c, 31000);
  assert.equal(c.view().status, 'Connected. Ready.');
  c.dispatch({ type: 'tick', now: 50000 });
  assert.equal(c.view().connection, 'disconnected');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 52000 })), [], 'the process it started still runs: no second one');
});

test('a pong before the wait is over: the launcher is never asked', () => {
  const c = device();
  connect(c, 1500);
  for (let now = 3500; now < 20000; now += 2000) {
    assert.deepEqual(launches(c.dispatch({ type: 'tick', now })), []);
    c.dispatch({ type: 'osc', address: '/stage/pong', args: [], now: now + 1 });
  }
});

test('the launcher could not start it: plain words; a path typed in the settings field tries again', () => {
  const c = device();
  c.dispatch({ type: 'tick', now: 7000 });
  c.dispatch({ type: 'launcher', args: ['failed', 'the', 'stage-bridge command was not found.', 'Set its path below.'] });
  assert.equal(c.view().status, 'Could not start stage-bridge: the stage-bridge command was not found. Set its path below.');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 9000 })), [], 'no retry loop');
  c.dispatch({ type: 'set', key: 'launcher', value: '"Macintosh HD:/Users/alice/stage bridge/.venv/bin/stage-bridge"' });
  assert.equal(c.view().ui.launcher, 'Macintosh HD:/Users/alice/stage bridge/.venv/bin/stage-bridge');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 11000 })),
    [{ type: 'launch', sendPort: 9000, receivePort: 9001, path: '/Users/alice/stage bridge/.venv/bin/stage-bridge',
      hint: '/Users/alice/Music/Ableton/User Library/Presets/Audio Effects/Max Audio Effect' }],
    'the Max-style path of a dropped file becomes the native one');
});

test('the daemon exited: its code and last words; already running elsewhere: says which port to check', () => {
  const c = device();
  c.dispatch({ type: 'tick', now: 7000 });
  c.dispatch({ type: 'launcher', args: ['started', 17] });
  c.dispatch({ type: 'launcher', args: ['exited', 1, 'error: the drums model weights are not installed'] });
  assert.equal(c.view().status, 'stage-bridge stopped (exit code 1): error: the drums model weights are not installed. ' +
    'Copy its last lines from the Max window.');
  assert.deepEqual(launches(c.dispatch({ type: 'tick', now: 9000 })), [], 'it stopped: not restarted in a loop');
  c.dispatch({ type: 'generate', transport: {}, now: 9500 });
  assert.equal(c.view().state, 'disconnected', 'Generate does not fail: it starts the daemon again');
  assert.equal(launches(c.dispatch({ type: 'tick', now: 11000 })).length, 1);
  assert.match(c.view().status, /^Starting the stage-bridge daemon/);
  const d = device();
  d.dispatch({ type: 'tick', now: 7000 });
  d.dispatch({ type: 'launcher', args: ['already', 9000] });
  assert.match(d.view().status, /already running on port 9000: waiting for its answer. If none comes, set "Receive port"/);
  assert.deepEqual(launches(d.dispatch({ type: 'tick', now: 9000 })), []);
  connect(d, 9500);
  assert.equal(d.view().status, 'Connected. Ready.');
});

test('the launch message: ports as numbers, texts as one encoded symbol each, "-" when empty', () => {
  assert.deepEqual(L.launchAtoms({ sendPort: 9000, receivePort: 9001, path: 'C:\\Program Files\\sb.exe', hint: '' }),
    ['launch', 9000, 9001, 'C%3A%5CProgram%20Files%5Csb.exe', '-']);
});

test('launcher replies parse whatever way Max split the text', () => {
  assert.deepEqual(L.parseLauncher(['started', 12]), { kind: 'started', pid: 12 });
  assert.deepEqual(L.parseLauncher(['failed', 'not found']), { kind: 'failed', text: 'not found' });
  assert.deepEqual(L.parseLauncher(['failed', 'not', 'found']), { kind: 'failed', text: 'not found' });
  assert.deepEqual(L.parseLauncher(['exited', 2, 'usage', 'error']), { kind: 'exited', code: 2, text: 'usage error' });
  assert.deepEqual(L.parseLauncher(['already', '9000']), { kind: 'already', port: 9000 });
  assert.equal(L.parseLauncher(['hello']).kind, 'unknown');
});

// -- audition ---------------------------------------------------------------------------------------------

// A finished 2-bar click job whose take starts at the bar line after beat 13 (beat 16, bar 5 in 4/4).
function withTakes(options = {}) {
  const c = device(options);
  connect(c);
  liveTempo(c, 120);
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  c.dispatch({ type: 'set', key: 'barsIndex', value: 1 });
  c.dispatch({ type: 'generate', transport: { songBeats: 13 } });
  c.dispatch({ type: 'osc', address: '/stage/job/done', args: [c.view().jobId, '/Users/alice/o/a.take1.wav', '/Users/alice/o/a.take2.wav'] });
  return c;
}
const player = (actions) => actions.filter((a) => /^(player|audition)/.test(a.type));

test('audition while stopped: arms a timepoint at the take\'s start bar; Play then starts it there', () => {
  const c = withTakes();
  const actions = c.dispatch({ type: 'audition', transport: { playing: false, songBeats: 0 } });
  assert.deepEqual(player(actions), [
    { type: 'player', command: 'open', path: 'Macintosh HD:/Users/alice/o/a.take1.wav' },
    { type: 'auditionArm', ticks: 16 * 480 + 1 },
    { type: 'auditionGate', open: true }]);
  assert.equal(c.view().audition.state, 'armed');
  assert.match(c.view().status, /a\.take1\.wav plays when Live reaches bar 5/);
  assert.deepEqual(player(c.dispatch({ type: 'live', key: 'playing', value: 1, transport: { playing: true, songBeats: 0 } })), [],
    'before the take: the timepoint starts it');
  c.dispatch({ type: 'live', key: 'playing', value: 0 });
  c.dispatch({ type: 'audition', transport: { playing: false, songBeats: 16 } });
  assert.deepEqual(player(c.dispatch({ type: 'live', key: 'playing', value: 1, transport: { playing: true, songBeats: 16 } })), [],
    'Play pressed right on the take\'s bar: the timepoint (one tick on) starts it, no second start by seek');
  c.dispatch({ type: 'auditionStarted' });
  assert.equal(c.view().audition.state, 'playing');
  assert.match(c.view().status, /^Auditioning a\.take1\.wav/);
  c.dispatch({ type: 'auditionEnded' });
  assert.equal(c.view().audition.state, 'armed', 'stays armed: a loop back to the start plays it again');
  assert.deepEqual(player(c.dispatch({ type: 'live', key: 'playing', value: 0 })),
    [{ type: 'auditionGate', open: false }, { type: 'player', command: 'stop' }], 'the transport stops: audition stops');
  assert.equal(c.view().audition.state, 'off');
});

test('audition with the playhead inside the take: starts at once at the matching offset (sfplay~ seek, ms)', () => {
  const c = withTakes();
  c.dispatch({ type: 'live', key: 'playing', value: 1, transport: { playing: true, songBeats: 2 } });
  const actions = c.dispatch({ type: 'audition', transport: { playing: true, songBeats: 19 } });
  assert.deepEqual(player(actions).slice(-1), [{ type: 'player', command: 'seek', ms: 1500 }], '3 beats at 120 bpm');
  assert.equal(c.view().audition.state, 'playing');
  assert.deepEqual(player(c.dispatch({ type: 'audition' })),
    [{ type: 'auditionGate', open: false }, { type: 'player', command: 'stop' }], 'pressed again: stops');
  assert.equal(c.view().status, 'Audition stopped. Done: 2 takes. Pick one, then Insert, or drag it from Live\'s browser.');
  // past the take's end (beat 24): wait for the timepoint, do not seek
  const late = player(c.dispatch({ type: 'audition', transport: { playing: true, songBeats: 24.5 } }));
  assert.equal(late.filter((a) => a.command === 'seek').length, 0);
  assert.equal(c.view().audition.state, 'armed');
});

test('audition follows the chosen take; nothing to hear before a generation', () => {
  const c = withTakes();
  c.dispatch({ type: 'audition', transport: { playing: true, songBeats: 17 } });
  const actions = player(c.dispatch({ type: 'selectTake', index: 1, transport: { playing: true, songBeats: 18 } }));
  assert.deepEqual(actions.filter((a) => a.type === 'player').map((a) => a.command), ['stop', 'open', 'seek']);
  assert.equal(actions[2].path, 'Macintosh HD:/Users/alice/o/a.take2.wav');
  assert.equal(actions[actions.length - 1].ms, 1000);
  const fresh = device();
  assert.deepEqual(fresh.dispatch({ type: 'audition', transport: {} }).filter((a) => a.type !== 'state'), []);
  assert.equal(fresh.view().status, 'Nothing to audition yet: generate first.');
});

test('audition offsets: inside [start, start + length) only', () => {
  assert.equal(L.auditionOffsetMs(16, 16, 8, 120), 0);
  assert.equal(L.auditionOffsetMs(17.5, 16, 8, 90), 1000);
  assert.equal(L.auditionOffsetMs(15.9, 16, 8, 120), null);
  assert.equal(L.auditionOffsetMs(24, 16, 8, 120), null);
  assert.equal(L.auditionOffsetMs(17, 16, 8, null), null);
});

// -- remembered with the Live set -----------------------------------------------------------------------

const states = (actions) => actions.filter((a) => a.type === 'state').map((a) => a.value);

test('settings and takes are saved as one symbol whenever they change, and only then', () => {
  const c = withTakes();
  assert.deepEqual(states(c.dispatch({ type: 'tick', now: 2000 })), [], 'nothing changed');
  const saved = states(c.dispatch({ type: 'set', key: 'prompt', value: 'Genres: "Rock", 70s; $1 \\ x' }));
  assert.equal(saved.length, 1);
  assert.match(saved[0], /^[A-Za-z0-9%._!~*'()-]+$/, 'no space, quote, comma, semicolon, backslash or $ for Max to split on');
  const back = L.decodeState(saved[0]);
  assert.equal(back.prompt, 'Genres: "Rock", 70s; $1 \\ x');
  assert.deepEqual(back.results, ['/Users/alice/o/a.take1.wav', '/Users/alice/o/a.take2.wav']);
  assert.deepEqual(back.done, { jobId: c.view().jobId, anchorBeats: 16, lengthBeats: 8, paths: back.results });
  assert.equal(states(c.dispatch({ type: 'selectTake', index: 1 })).length, 1);
});

test('reopening the set: the texts are shown again and the takes can be inserted and auditioned', () => {
  const before = withTakes();
  before.dispatch({ type: 'set', key: 'home', value: '/Users/alice/stage home' });
  before.dispatch({ type: 'set', key: 'launcher', value: '/opt/sb/bin/stage-bridge' });
  const saved = states(before.dispatch({ type: 'selectTake', index: 1 }))[0];
  const after = device();
  const actions = after.dispatch({ type: 'restore', value: saved });
  assert.deepEqual(actions.filter((a) => a.type === 'showText'), [
    { type: 'showText', key: 'prompt', text: '' },
    { type: 'showText', key: 'home', text: '/Users/alice/stage home' },
    { type: 'showText', key: 'command', text: '/opt/sb/bin/stage-bridge' }]);
  assert.deepEqual(states(actions), [], 'restoring does not write the same state back');
  const v = after.view();
  assert.deepEqual(v.results, ['a.take1.wav', 'a.take2.wav']);
  assert.equal(v.selected, 1);
  assert.equal(v.state, 'done');
  assert.equal(after.bouncesFolder(), '/Users/alice/stage home/bounces');
  const insert = after.dispatch({ type: 'insert', trackIndex: 0 });
  assert.equal(insert[0].startBeats, 16);
  assert.equal(insert[0].nativePath, '/Users/alice/o/a.take2.wav');
});

test('a state this device did not write is ignored, field by field', () => {
  const c = device();
  for (const bad of ['', 'bang', '%7B', encodeURIComponent('{"v":99}'), encodeURIComponent('[1,2]')]) {
    assert.deepEqual(c.dispatch({ type: 'restore', value: bad }), [], bad);
  }
  const odd = L.decodeState(encodeURIComponent(JSON.stringify({ v: 1, prompt: 7, results: ['a.wav', 3, ''], selected: 5,
    done: { anchorBeats: 4 } })));
  assert.deepEqual(odd, { prompt: '', home: '', launcher: '', results: ['a.wav'], selected: 0,
    done: { jobId: '', anchorBeats: 4, lengthBeats: 0, paths: ['a.wav'] } });
  assert.deepEqual(L.decodeState(encodeURIComponent(JSON.stringify({ v: 1, results: ['a.wav'] }))).results, [],
    'takes without their start beat are not restored');
});

// issue 16: /stage/job/done with `scores 1` (docs/protocol.md), and the take menu that shows them
test('done with scores: paths up to the first "take", then each take\'s scores by key', () => {
  const reply = L.parseReply('/stage/job/done', ['j', '/o/a.take1.wav', '/o/a.take2.wav',
    'take', 1, 'score', 0.94, 'grid_f1', 0.94, 'offset_ms', -3.5, 'clipping', 0, 'silence_ratio', 0,
    'take', 2, 'score', 0.5, 'grid_f1', 0.625, 'lufs', -20.25, 'unknown_key', 3]);
  assert.deepEqual(reply.paths, ['/o/a.take1.wav', '/o/a.take2.wav']);
  assert.deepEqual(reply.fits, [
    { score: 0.94, grid_f1: 0.94, offset_ms: -3.5, clipping: 0, silence_ratio: 0 },
    { score: 0.5, grid_f1: 0.625, lufs: -20.25 }]);
  // a take number outside the paths, or scores without a take, are dropped, not misfiled
  const odd = L.parseReply('/stage/job/done', ['j', '/o/a.wav', 'take', 3, 'grid_f1', 1, 'take', 1]);
  assert.deepEqual(odd, { kind: 'done', jobId: 'j', paths: ['/o/a.wav'], fits: [{}] });
  assert.deepEqual(L.SCORE_KEYS.slice(0, 2), ['score', 'grid_f1']);
});

test('the take menu says each take\'s grid fit next to it; unscored takes keep their file names', () => {
  const c = device();
  connect(c);
  liveTempo(c, 120);
  c.dispatch({ type: 'set', key: 'modeIndex', value: 1 });
  const [msg] = sent(c.dispatch({ type: 'generate', transport: { songBeats: 5, playing: true }, date: 0 }));
  const id = msg.args[0].value;
  assert.deepEqual(msg.args.slice(msg.args.length - 2), [s('scores'), i(1)], 'the device asks for the scores');
  c.dispatch({ type: 'osc', address: '/stage/job/done', args: [id, '/o/a.take1.wav', '/o/a.take2.wav', 'take', 1,
    'grid_f1', 0.9375, 'take', 2, 'score', 0.1] });
  assert.deepEqual(c.view().results, ['take 1 - grid 0.94', 'a.take2.wav']);
  assert.deepEqual(c.view().paths, ['/o/a.take1.wav', '/o/a.take2.wav']);
  assert.equal(L.takeLabel('/o/x.wav', 1, { grid_f1: 0.5 }), 'take 2 - grid 0.50');
});

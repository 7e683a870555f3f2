/*
 * stage_device.js - the Max [js] glue of the STAGE Bridge device. Kept thin on purpose: it turns
 * Max messages into StageLogic events and StageLogic actions into Max messages. Every decision
 * (messages, timing, paths, states, texts) is in stage_logic.js, which Node tests.
 *
 * Inlet 0 receives (see the patcher, max_for_live/build.py):
 *   init                          from [live.thisdevice] once the Live API is usable
 *   tempo f / num i / den i / playing i       from the [live.observer]s
 *   instrument i / bars i / takes f / mode i / target i / prompt ... / home ... / command ...   from the UI
 *   sendport i / recvport i       the port boxes (the patcher also sends them to udpsend/udpreceive)
 *   generate x / cancel x / insert x / reveal x / audition x / take i / track i   buttons and menus
 *   tick                          from [metro 2000]: ping the daemon
 *   recstarted / recstopped       from the recorder chain ([timepoint] -> [gate] ... [delay])
 *   auditionstarted / auditionended   from the audition chain ([timepoint] -> [gate] ... [sfplay~])
 *   launcher ...                  the launcher's replies, from [node.script stage_launcher.js]
 *   saved <state>                 the state saved with the Live set, from [pattr stage_state]
 *   /stage/...                    the daemon's replies, from [udpreceive]
 * Outlet 0 goes to [route osc rec arm gate delaytime delay status progress results tracks led node player
 * auditionarm auditiongate state showprompt showhome showcommand].
 */
autowatch = 0;
inlets = 1;
outlets = 1;
setinletassist(0, 'UI values, Live values, daemon replies');
setoutletassist(0, 'to [route osc rec arm gate ... state showprompt showhome showcommand]');

include('stage_logic.js');

var L = StageLogic;
function notCreated(path) {
    return 'Live did not create the clip from ' + path + ': check that the file still exists (inserting needs ' +
        'Live 12; Session view: 12.0.5 or later). Drag the take from Live\'s browser instead.';
}

var ctl = new L.Controller({
    os: max.os,
    bootVolume: volumeOf(max.apppath),
    devicePath: this.patcher ? this.patcher.filepath : '',
    now: Date.now()
});
var song = null;           // LiveAPI on live_set, once the device is ready
var tracksWatch = null;    // observes live_set tracks to refresh the track menu
var audioTracks = [];      // [{index, name}] shown in the track menu
var chosenTrack = -1;      // index into live_set tracks
var timers = [];
var shown = { status: null, progress: null, results: null, led: null };

function volumeOf(maxPath) {
    var m = /^([^\/:]+):\//.exec(String(maxPath || ''));
    return m && max.os === 'macintosh' ? m[1] : '';
}

function first(values) {
    return values && values.length ? values[0] : undefined;
}

// -- events in ---------------------------------------------------------------------------------

function dispatch(event) {
    event.now = Date.now();
    var actions = [];
    try {
        actions = ctl.dispatch(event);
    } catch (e) {
        post('STAGE Bridge: ' + e.message + '\n');
    }
    for (var i = 0; i < actions.length; i++) {
        perform(actions[i]);
    }
    render();
}

function init() {
    song = new LiveAPI(null, 'live_set');
    tracksWatch = new LiveAPI(function (args) {
        if (args && args[0] === 'tracks') {
            refreshTracks();
        }
    }, 'live_set');
    tracksWatch.property = 'tracks';
    refreshTracks();
    render();
}

function setting(key, value) {
    dispatch({ type: 'set', key: key, value: value });
}

function instrument(i) { setting('instrumentIndex', i); }
function bars(i) { setting('barsIndex', i); }
function takes(v) { setting('takes', v); }
function mode(i) { setting('modeIndex', i); }
function target(i) { setting('targetIndex', i); }
function sendport(v) { setting('sendPort', v); }
function recvport(v) { setting('receivePort', v); }
function prompt() { setting('prompt', arrayfromargs(arguments).join(' ')); }
function home() { setting('home', arrayfromargs(arguments).join(' ')); }
function command() { setting('launcher', arrayfromargs(arguments).join(' ')); }

function live(key, value) {
    dispatch({ type: 'live', key: key, value: value, transport: key === 'playing' ? transport() : undefined });
}

function tempo(v) { live('tempo', v); }
function num(v) { live('num', v); }
function den(v) { live('den', v); }
function playing(v) { live('playing', v); }

function pressed(args) {
    // live.text buttons send 1 (or a bang); a 0 is a release and means nothing here.
    return !(args.length && args[0] === 0);
}

function generate() {
    if (pressed(arrayfromargs(arguments))) {
        dispatch({ type: 'generate', transport: transport(), date: Date.now() });
    }
}

function cancel() {
    if (pressed(arrayfromargs(arguments))) {
        dispatch({ type: 'cancel' });
    }
}

function insert() {
    if (pressed(arrayfromargs(arguments))) {
        dispatch({ type: 'insert', trackIndex: chosenTrack });
    }
}

function reveal() {
    if (pressed(arrayfromargs(arguments))) {
        dispatch({ type: 'reveal' });
    }
}

function take(i) { dispatch({ type: 'selectTake', index: i, transport: transport() }); }

function audition() {
    if (pressed(arrayfromargs(arguments))) {
        dispatch({ type: 'audition', transport: transport() });
    }
}

function auditionstarted() { dispatch({ type: 'auditionStarted' }); }
function auditionended() { dispatch({ type: 'auditionEnded' }); }
// [node.script]'s left outlet: what stage_launcher.js sent with maxAPI.outlet (https://docs.cycling74.com/nodeformax/api/)
function launcher() { dispatch({ type: 'launcher', args: arrayfromargs(arguments) }); }
// [pattr stage_state] outputs the saved state when Live restores the set's parameters
// (https://docs.cycling74.com/max8/vignettes/live_parameters: blob parameters are stored with the set)
function saved(value) { dispatch({ type: 'restore', value: value }); }

function track(i) {
    chosenTrack = i >= 0 && i < audioTracks.length ? audioTracks[i].index : -1;
}

function tick() { dispatch({ type: 'tick' }); }
function recstarted() { dispatch({ type: 'recordStarted' }); }
function recstopped() { dispatch({ type: 'recordStopped' }); }

function anything() {
    var address = messagename;
    if (address.charAt(0) === '/') {
        dispatch({ type: 'osc', address: address, args: arrayfromargs(arguments) });
    } else {
        post('STAGE Bridge: unknown message ' + address + '\n');
    }
}

// -- Live ---------------------------------------------------------------------------------------

function transport() {
    if (!song) {
        return {};
    }
    return {
        songBeats: Number(first(song.get('current_song_time'))),
        playing: Number(first(song.get('is_playing'))) === 1,
        loopOn: Number(first(song.get('loop'))) === 1,
        loopStart: Number(first(song.get('loop_start'))),
        loopLength: Number(first(song.get('loop_length')))
    };
}

function refreshTracks() {
    if (!song) {
        return;
    }
    var previous = chosenTrack;
    audioTracks = [];
    outlet(0, 'tracks', 'clear');
    var count = song.getcount('tracks');
    var chosen = -1;
    for (var i = 0; i < count; i++) {
        var t = new LiveAPI(null, 'live_set tracks ' + i);
        if (Number(first(t.get('has_audio_input'))) === 1 && Number(first(t.get('is_foldable'))) !== 1) {
            if (i === previous) {
                chosen = audioTracks.length;
            }
            audioTracks.push({ index: i, name: unquote(first(t.get('name'))) });
            outlet(0, 'tracks', 'append', (i + 1) + ' ' + audioTracks[audioTracks.length - 1].name);
        }
    }
    if (chosen < 0 && audioTracks.length) {
        chosen = 0;
    }
    chosenTrack = chosen >= 0 ? audioTracks[chosen].index : -1;
    if (chosen >= 0) {
        outlet(0, 'tracks', 'set', chosen);
    }
}

// LiveAPI.get returns a symbol that holds spaces wrapped in literal double quotes (issue 13, D3:
// `"My Track"`); the menu shows the name as Live does.
function unquote(value) {
    var s = String(value);
    return s.length >= 2 && s.charAt(0) === '"' && s.charAt(s.length - 1) === '"' ? s.slice(1, -1) : s;
}

// The id Live answered for a created clip ("id N", as a string or as the atoms ['id', N]), 0 for none.
// Track.create_audio_clip / ClipSlot.create_audio_clip create the clip (https://docs.cycling74.com/apiref/lom/clipslot)
// and return it (Live's own docstrings list both among the ways to a Clip:
// https://photonicvelocity.github.io/LiveAPI/tracks/Clip/). Not seen in a running Live yet.
function createdId(answer) {
    var words = typeof answer === 'string' ? answer.split(' ') : (answer && answer.length ? answer : []);
    return words.length >= 2 && String(words[0]) === 'id' ? Number(words[1]) || 0 : 0;
}

// The clip a create_audio_clip call made, found in the Live set: what the device relies on when the call
// returns no id (nothing documents the return value; issue 13 review). Session: the slot now has a clip
// (ClipSlot.has_clip, https://docs.cycling74.com/apiref/lom/clipslot). Arrangement: a clip of the track
// that starts at the anchor and plays the take's file (Track.arrangement_clips; Clip.start_time and
// Clip.file_path, https://docs.cycling74.com/apiref/lom/track and https://docs.cycling74.com/apiref/lom/clip).
function findCreated(base, path, startBeats) {
    if (startBeats === undefined) {
        var slot = new LiveAPI(null, base);
        return Number(first(slot.get('has_clip'))) === 1 ? Number(new LiveAPI(null, base + ' clip').id) || 0 : 0;
    }
    var name = path.slice(path.lastIndexOf('/') + 1);
    var track = new LiveAPI(null, base);
    var count = track.getcount('arrangement_clips');
    for (var j = count - 1; j >= 0; j--) {
        var clip = new LiveAPI(null, base + ' arrangement_clips ' + j);
        var file = unquote(first(clip.get('file_path'))).replace(/\\/g, '/');
        if (Math.abs(Number(first(clip.get('start_time'))) - startBeats) < 1e-6 &&
            file.slice(file.lastIndexOf('/') + 1) === name) {
            return Number(clip.id) || 0;
        }
    }
    return 0;
}

// Calls create_audio_clip on the object at `base` and returns the new clip's id (0 when Live created
// none), judged by the id the call returns or, when it returns none, by the clip found in the set (so a
// clip that was made is never made twice). Whether Max passes a string holding spaces as one atom or
// splits it is not settled (issue 13, D2), so an unquoted call that creates nothing is retried once with
// the path in double quotes, which Max keeps as one symbol.
function createClip(base, path, startBeats) {
    var api = new LiveAPI(null, base);
    var forms = /\s/.test(path) ? [path, '"' + path + '"'] : [path];
    for (var k = 0; k < forms.length; k++) {
        var answer = startBeats === undefined ? api.call('create_audio_clip', forms[k])
            : api.call('create_audio_clip', forms[k], startBeats);
        var id = createdId(answer) || findCreated(base, path, startBeats);
        if (id) {
            return id;
        }
    }
    return 0;
}

function insertClip(a) {
    var base = 'live_set tracks ' + a.trackIndex;
    var path = String(a.path).replace(/\\/g, '/');   // Windows: Live takes forward slashes (issue 13, U5)
    var t = new LiveAPI(null, base);
    if (!t || Number(t.id) === 0) {
        return { ok: false, message: 'That track no longer exists: choose another one.' };
    }
    if (Number(first(t.get('has_audio_input'))) !== 1) {
        return { ok: false, message: 'Choose an audio track (takes are audio).' };
    }
    var id = 0;
    var where;
    if (a.target === 'session') {
        var slots = t.getcount('clip_slots');
        for (var i = 0; i < slots && !where; i++) {
            var slot = new LiveAPI(null, base + ' clip_slots ' + i);
            if (Number(first(slot.get('has_clip'))) === 0) {
                id = createClip(base + ' clip_slots ' + i, path);
                if (!id) {
                    return { ok: false, message: notCreated(path) };
                }
                where = 'Session view, scene ' + (i + 1);
            }
        }
        if (!where) {
            return { ok: false, message: 'That track has no empty clip slot: add a scene, or choose Arrangement.' };
        }
    } else {
        // judged by the returned id, not by a count: a clip created where one starts can replace it (D4)
        id = createClip(base, path, a.startBeats);
        if (!id) {
            return { ok: false, message: notCreated(path) };
        }
        where = 'Arrangement view at beat ' + (Math.round(a.startBeats * 1000) / 1000);
    }
    var clip = new LiveAPI(null, 'id ' + id);
    clip.set('warping', 0);
    clip.set('name', a.name);
    return { ok: true, message: 'Inserted ' + a.name + ' (' + where + ', warping off).' };
}

// -- actions out -------------------------------------------------------------------------------

function perform(a) {
    switch (a.type) {
    case 'send':
        outlet(0, ['osc'].concat(L.toAtoms(a.message)));
        break;
    case 'recorder':
        if (a.command === 'open') {
            outlet(0, 'rec', 'open', a.path, 'wave');
        } else {
            outlet(0, 'rec', 0);
        }
        break;
    case 'arm':
        outlet(0, 'arm', a.ticks);
        break;
    case 'gate':
        outlet(0, 'gate', a.open ? 1 : 0);
        break;
    case 'stopAfter':
        if (a.cancel) {
            outlet(0, 'delay', 'stop');
        } else {
            outlet(0, 'delaytime', a.ms);
        }
        break;
    case 'schedule':
        // Task(function, object, arguments): the arguments travel as an ARRAY spread into the call
        // (https://docs.cycling74.com/max8/vignettes/jstaskobject).
        var task = new Task(dispatch, this, [a.event]);
        timers.push(task);
        if (timers.length > 8) {
            timers.shift();
        }
        task.schedule(a.afterMs);
        break;
    case 'insertClip':
        var result;
        try {
            result = insertClip(a);
        } catch (e) {
            result = { ok: false, message: notCreated(a.path) + ' (' + e.message + ')' };
        }
        dispatch({ type: 'insertResult', ok: result.ok, message: result.message });
        break;
    case 'reveal':
        messnamed('max', 'launchbrowser', a.url);   // Finder / Explorer opens the folder
        break;
    case 'launch':
        outlet(0, ['node'].concat(L.launchAtoms(a)));   // -> [node.script stage_launcher.js]: launch ...
        break;
    case 'player':
        // [sfplay~]: open <file>; seek <ms> starts playing there; 0 stops
        // (https://docs.cycling74.com/max8/refpages/sfplay~)
        if (a.command === 'open') {
            outlet(0, 'player', 'open', a.path);
        } else if (a.command === 'seek') {
            outlet(0, 'player', 'seek', a.ms);
        } else {
            outlet(0, 'player', 0);
        }
        break;
    case 'auditionArm':
        outlet(0, 'auditionarm', a.ticks);
        break;
    case 'auditionGate':
        outlet(0, 'auditiongate', a.open ? 1 : 0);
        break;
    case 'state':
        // [pattr] set: keeps the value without output (https://docs.cycling74.com/max8/refpages/pattr)
        outlet(0, 'state', 'set', a.value);
        break;
    case 'showText':
        // [textedit] set <text>: shows it without output; clear: empties it
        // (https://docs.cycling74.com/max8/refpages/textedit); an empty symbol after `set` could vanish on the way
        if (a.text === '') {
            outlet(0, 'show' + a.key, 'clear');
        } else {
            outlet(0, 'show' + a.key, 'set', a.text);
        }
        break;
    default:
        break;
    }
}

function render() {
    var v = ctl.view();
    if (v.status !== shown.status) {
        shown.status = v.status;
        outlet(0, 'status', v.status);
    }
    if (v.progress !== shown.progress) {
        shown.progress = v.progress;
        outlet(0, 'progress', v.progress);
    }
    var list = v.results.join('\n');
    if (list !== shown.results) {
        shown.results = list;
        outlet(0, 'results', 'clear');
        for (var i = 0; i < v.results.length; i++) {
            outlet(0, 'results', 'append', v.results[i]);
        }
        if (v.results.length) {
            outlet(0, 'results', 'set', v.selected);
            refreshTracks();
        }
    }
    var led = v.connection === 'connected' ? 1 : 0;
    if (led !== shown.led) {
        shown.led = led;
        outlet(0, 'led', led);
    }
}

// Helpers are not messages: Max must not call them from the patcher.
volumeOf.local = 1;
first.local = 1;
dispatch.local = 1;
setting.local = 1;
live.local = 1;
pressed.local = 1;
transport.local = 1;
refreshTracks.local = 1;
insertClip.local = 1;
findCreated.local = 1;
createClip.local = 1;
createdId.local = 1;
unquote.local = 1;
perform.local = 1;
render.local = 1;

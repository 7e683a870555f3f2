{
	"patcher": {
		"fileversion": 1,
		"appversion": {
			"major": 9,
			"minor": 0,
			"revision": 10,
			"architecture": "x64",
			"modernui": 1
		},
		"classnamespace": "box",
		"rect": [
			100.0,
			100.0,
			1460.0,
			960.0
		],
		"openrect": [
			0.0,
			0.0,
			700.0,
			169.0
		],
		"bglocked": 0,
		"openinpresentation": 1,
		"default_fontsize": 10.0,
		"default_fontface": 0,
		"default_fontname": "Arial Bold",
		"gridonopen": 1,
		"gridsize": [
			8.0,
			8.0
		],
		"gridsnaponopen": 1,
		"objectsnaponopen": 1,
		"statusbarvisible": 2,
		"toolbarvisible": 1,
		"boxanimatetime": 500,
		"enablehscroll": 1,
		"enablevscroll": 1,
		"devicewidth": 700.0,
		"description": "Records the song at a bar line and asks the stage-bridge daemon for a drum or bass stem.",
		"digest": "STAGE stem generation via the stage-bridge daemon",
		"tags": "",
		"style": "",
		"subpatcher_template": "",
		"assistshowspatchername": 0,
		"boxes": [
			{
				"box": {
					"maxclass": "newobj",
					"text": "plugin~",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						40.0,
						620.0,
						61.0,
						22.0
					],
					"outlettype": [
						"signal",
						"signal"
					],
					"id": "plugin"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "plugout~",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						40.0,
						700.0,
						68.0,
						22.0
					],
					"outlettype": [
						"signal",
						"signal"
					],
					"id": "plugout"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "sfrecord~ 2 @bitdepth 24",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						200.0,
						700.0,
						160.0,
						22.0
					],
					"outlettype": [
						"signal"
					],
					"id": "recorder"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "sfplay~ 2",
					"numinlets": 2,
					"numoutlets": 3,
					"patching_rect": [
						40.0,
						780.0,
						70.0,
						22.0
					],
					"outlettype": [
						"signal",
						"signal",
						"bang"
					],
					"id": "player"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "*~ 1.",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						40.0,
						820.0,
						40.0,
						22.0
					],
					"outlettype": [
						"signal"
					],
					"id": "level_0"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "*~ 1.",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						120.0,
						820.0,
						40.0,
						22.0
					],
					"outlettype": [
						"signal"
					],
					"id": "level_1"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "dbtoa",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						160.0,
						760.0,
						50.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "dbtoa"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "js stage_device.js",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						420.0,
						300.0,
						130.0,
						22.0
					],
					"outlettype": [
						""
					],
					"saved_object_attributes": {
						"filename": "stage_device.js",
						"parameter_enable": 0
					},
					"id": "script"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "route osc rec arm gate delaytime delay status progress results tracks led node player auditionarm auditiongate state showprompt showhome showcommand",
					"numinlets": 2,
					"numoutlets": 20,
					"patching_rect": [
						420.0,
						360.0,
						900.0,
						22.0
					],
					"outlettype": [
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						"",
						""
					],
					"id": "router"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "js stage_logic.js",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						600.0,
						300.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"saved_object_attributes": {
						"filename": "stage_logic.js",
						"parameter_enable": 0
					},
					"id": "logic"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "node.script stage_launcher.js @autostart 1",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						600.0,
						400.0,
						250.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"saved_object_attributes": {
						"autostart": 1,
						"defer": 0,
						"watch": 0
					},
					"textfile": {
						"filename": "stage_launcher.js",
						"flags": 0,
						"embed": 0,
						"autowatch": 1
					},
					"id": "launcher"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend launcher",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						600.0,
						440.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_launcher"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "pattr stage_state @parameter_enable 1",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						860.0,
						400.0,
						200.0,
						22.0
					],
					"outlettype": [
						"",
						"",
						""
					],
					"varname": "stage_state",
					"saved_object_attributes": {
						"parameter_enable": 1,
						"parameter_mappable": 0
					},
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_invisible": 1,
							"parameter_longname": "STAGE state",
							"parameter_shortname": "State",
							"parameter_type": 3
						}
					},
					"id": "state"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend saved",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						860.0,
						440.0,
						90.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_saved"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "timepoint",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						200.0,
						860.0,
						70.0,
						22.0
					],
					"outlettype": [
						"bang"
					],
					"id": "audition_timepoint"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "gate",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						200.0,
						900.0,
						40.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "audition_gate"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "t b b",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						200.0,
						940.0,
						50.0,
						22.0
					],
					"outlettype": [
						"bang",
						"bang"
					],
					"id": "audition_start"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "1",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						300.0,
						980.0,
						30.0,
						22.0
					],
					"id": "msg_play"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "auditionstarted",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						120.0,
						980.0,
						117.0,
						22.0
					],
					"id": "msg_auditionstarted"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "auditionended",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						120.0,
						1020.0,
						103.0,
						22.0
					],
					"id": "msg_auditionended"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.thisdevice",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						40.0,
						20.0,
						100.0,
						22.0
					],
					"outlettype": [
						"bang",
						"int",
						"int"
					],
					"id": "thisdevice"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "t b b b",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						40.0,
						60.0,
						70.0,
						22.0
					],
					"outlettype": [
						"bang",
						"bang",
						"bang"
					],
					"id": "ready"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "init",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						160.0,
						100.0,
						40.0,
						22.0
					],
					"id": "msg_init"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "1",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						40.0,
						100.0,
						30.0,
						22.0
					],
					"id": "msg_metro_on"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "metro 2000",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						40.0,
						140.0,
						80.0,
						22.0
					],
					"outlettype": [
						"bang"
					],
					"id": "metro"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "tick",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						40.0,
						180.0,
						40.0,
						22.0
					],
					"id": "msg_tick"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.path live_set",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						240.0,
						100.0,
						110.0,
						22.0
					],
					"outlettype": [
						"",
						"",
						""
					],
					"id": "liveset"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.observer tempo",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						240.0,
						150.0,
						160.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "observe_tempo"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend tempo",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						240.0,
						190.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_tempo"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.observer signature_numerator",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						410.0,
						150.0,
						160.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "observe_num"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend num",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						410.0,
						190.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_num"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.observer signature_denominator",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						580.0,
						150.0,
						160.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "observe_den"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend den",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						580.0,
						190.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_den"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "live.observer is_playing",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						750.0,
						150.0,
						160.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "observe_playing"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend playing",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						750.0,
						190.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_playing"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "udpsend 127.0.0.1 9000",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						420.0,
						440.0,
						150.0,
						22.0
					],
					"id": "udpsend"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "udpreceive 9001",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						600.0,
						240.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "udpreceive"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "timepoint",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						200.0,
						460.0,
						70.0,
						22.0
					],
					"outlettype": [
						"bang"
					],
					"id": "timepoint"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "gate",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						200.0,
						500.0,
						40.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "armgate"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "t b b b",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						200.0,
						540.0,
						70.0,
						22.0
					],
					"outlettype": [
						"bang",
						"bang",
						"bang"
					],
					"id": "start"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "1",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						330.0,
						580.0,
						30.0,
						22.0
					],
					"id": "msg_rec_on"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "delay",
					"numinlets": 2,
					"numoutlets": 1,
					"patching_rect": [
						260.0,
						580.0,
						50.0,
						22.0
					],
					"outlettype": [
						"bang"
					],
					"id": "stoptimer"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "recstarted",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						120.0,
						580.0,
						82.0,
						22.0
					],
					"id": "msg_recstarted"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "t b b",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						260.0,
						620.0,
						50.0,
						22.0
					],
					"outlettype": [
						"bang",
						"bang"
					],
					"id": "stop"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "0",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						330.0,
						660.0,
						30.0,
						22.0
					],
					"id": "msg_rec_off"
				}
			},
			{
				"box": {
					"maxclass": "message",
					"text": "recstopped",
					"numinlets": 2,
					"numoutlets": 1,
					"outlettype": [
						""
					],
					"patching_rect": [
						120.0,
						660.0,
						82.0,
						22.0
					],
					"id": "msg_recstopped"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						20.0,
						60.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						4.0,
						60.0,
						16.0
					],
					"text": "Instrument",
					"textjustification": 0,
					"id": "label_instrument"
				}
			},
			{
				"box": {
					"maxclass": "live.tab",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						40.0,
						128.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						20.0,
						128.0,
						18.0
					],
					"outlettype": [
						"",
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Instrument",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Instrument",
							"parameter_shortname": "Instrument",
							"parameter_type": 2,
							"parameter_invisible": 1,
							"parameter_enum": [
								"drums",
								"bass"
							],
							"parameter_mmax": 1,
							"parameter_unitstyle": 9,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								0
							]
						}
					},
					"id": "ui_instrument"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						70.0,
						40.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						42.0,
						40.0,
						16.0
					],
					"text": "Bars",
					"textjustification": 0,
					"id": "label_bars"
				}
			},
			{
				"box": {
					"maxclass": "live.menu",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						90.0,
						88.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						44.0,
						42.0,
						88.0,
						16.0
					],
					"outlettype": [
						"",
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Bars",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Bars",
							"parameter_shortname": "Bars",
							"parameter_type": 2,
							"parameter_invisible": 1,
							"parameter_enum": [
								"1",
								"2",
								"4",
								"8",
								"16"
							],
							"parameter_mmax": 4,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								2
							]
						}
					},
					"id": "ui_bars"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						120.0,
						40.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						62.0,
						40.0,
						16.0
					],
					"text": "Takes",
					"textjustification": 0,
					"id": "label_takes"
				}
			},
			{
				"box": {
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						140.0,
						44.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						44.0,
						62.0,
						44.0,
						16.0
					],
					"outlettype": [
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Takes",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Takes",
							"parameter_shortname": "Takes",
							"parameter_type": 1,
							"parameter_invisible": 1,
							"parameter_mmin": 1.0,
							"parameter_mmax": 4.0,
							"parameter_unitstyle": 0,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								1
							]
						}
					},
					"id": "ui_takes"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						170.0,
						60.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						82.0,
						60.0,
						16.0
					],
					"text": "Context",
					"textjustification": 0,
					"id": "label_mode"
				}
			},
			{
				"box": {
					"maxclass": "live.tab",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						190.0,
						128.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						98.0,
						128.0,
						18.0
					],
					"outlettype": [
						"",
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Context",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Context",
							"parameter_shortname": "Context",
							"parameter_type": 2,
							"parameter_invisible": 1,
							"parameter_enum": [
								"mix",
								"click",
								"mix+click"
							],
							"parameter_mmax": 2,
							"parameter_unitstyle": 9,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								2
							]
						}
					},
					"id": "ui_mode"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend instrument",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						40.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_instrument"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend bars",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						90.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_bars"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend takes",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						140.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_takes"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend mode",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						190.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_mode"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						230.0,
						270.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						140.0,
						4.0,
						270.0,
						16.0
					],
					"text": "Prompt (optional), e.g. Genres: Rock. Moods: happy.",
					"textjustification": 0,
					"id": "label_prompt"
				}
			},
			{
				"box": {
					"maxclass": "textedit",
					"numinlets": 1,
					"numoutlets": 4,
					"patching_rect": [
						760.0,
						250.0,
						270.0,
						36.0
					],
					"presentation": 1,
					"presentation_rect": [
						140.0,
						20.0,
						270.0,
						36.0
					],
					"outlettype": [
						"",
						"int",
						"",
						""
					],
					"parameter_enable": 0,
					"lines": 2,
					"wordwrap": 1,
					"outputmode": 1,
					"bangmode": 0,
					"fontsize": 10.0,
					"hint": "Words that steer the generation, e.g. Genres: Rock. Moods: happy.",
					"id": "ui_prompt"
				}
			},
			{
				"box": {
					"maxclass": "live.text",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						300.0,
						100.0,
						20.0
					],
					"presentation": 1,
					"presentation_rect": [
						140.0,
						60.0,
						100.0,
						20.0
					],
					"outlettype": [
						"",
						""
					],
					"parameter_enable": 1,
					"varname": "Generate",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Generate",
							"parameter_shortname": "Generate",
							"parameter_type": 2,
							"parameter_invisible": 2,
							"parameter_enum": [
								"Generate",
								"Generate"
							],
							"parameter_mmax": 1
						}
					},
					"id": "ui_generate",
					"mode": 0,
					"text": "Generate",
					"texton": "Generate"
				}
			},
			{
				"box": {
					"maxclass": "live.text",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						330.0,
						70.0,
						20.0
					],
					"presentation": 1,
					"presentation_rect": [
						246.0,
						60.0,
						70.0,
						20.0
					],
					"outlettype": [
						"",
						""
					],
					"parameter_enable": 1,
					"varname": "Cancel",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Cancel",
							"parameter_shortname": "Cancel",
							"parameter_type": 2,
							"parameter_invisible": 2,
							"parameter_enum": [
								"Cancel",
								"Cancel"
							],
							"parameter_mmax": 1
						}
					},
					"id": "ui_cancel",
					"mode": 0,
					"text": "Cancel",
					"texton": "Cancel"
				}
			},
			{
				"box": {
					"maxclass": "slider",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						760.0,
						360.0,
						270.0,
						8.0
					],
					"presentation": 1,
					"presentation_rect": [
						140.0,
						84.0,
						270.0,
						8.0
					],
					"outlettype": [
						""
					],
					"parameter_enable": 0,
					"orientation": 1,
					"size": 101.0,
					"ignoreclick": 1,
					"knobshape": 5,
					"hint": "Generation progress",
					"id": "ui_progress"
				}
			},
			{
				"box": {
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						390.0,
						270.0,
						32.0
					],
					"presentation": 1,
					"presentation_rect": [
						140.0,
						94.0,
						270.0,
						32.0
					],
					"text": "Looking for the stage-bridge daemon...",
					"linecount": 2,
					"fontsize": 10.0,
					"id": "ui_status"
				}
			},
			{
				"box": {
					"maxclass": "led",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						760.0,
						430.0,
						14.0,
						14.0
					],
					"presentation": 1,
					"presentation_rect": [
						396.0,
						62.0,
						14.0,
						14.0
					],
					"outlettype": [
						"int"
					],
					"parameter_enable": 0,
					"ignoreclick": 1,
					"hint": "Lit while the stage-bridge daemon answers",
					"id": "ui_led"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "t l b",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						920.0,
						300.0,
						50.0,
						22.0
					],
					"outlettype": [
						"",
						"bang"
					],
					"id": "generate_press"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "route text",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						1060.0,
						250.0,
						70.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "prompt_text"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend prompt",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1060.0,
						280.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_prompt"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend generate",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						330.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_generate"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend cancel",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						360.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_cancel"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend set",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1220.0,
						390.0,
						80.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_status"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend set",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1220.0,
						360.0,
						80.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_progress"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						470.0,
						60.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						4.0,
						60.0,
						16.0
					],
					"text": "Results",
					"textjustification": 0,
					"id": "label_results"
				}
			},
			{
				"box": {
					"maxclass": "umenu",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						490.0,
						196.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						20.0,
						196.0,
						18.0
					],
					"outlettype": [
						"int",
						"",
						""
					],
					"parameter_enable": 0,
					"items": "<empty>",
					"fontsize": 10.0,
					"hint": "The last generated takes: pick one to insert or show",
					"id": "ui_results"
				}
			},
			{
				"box": {
					"maxclass": "live.text",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						520.0,
						96.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						42.0,
						96.0,
						16.0
					],
					"outlettype": [
						"",
						""
					],
					"parameter_enable": 1,
					"varname": "Show file",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Show file",
							"parameter_shortname": "Show",
							"parameter_type": 2,
							"parameter_invisible": 2,
							"parameter_enum": [
								"Show file",
								"Show file"
							],
							"parameter_mmax": 1
						}
					},
					"id": "ui_reveal",
					"mode": 0,
					"text": "Show file",
					"texton": "Show file"
				}
			},
			{
				"box": {
					"maxclass": "live.tab",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						550.0,
						196.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						62.0,
						196.0,
						16.0
					],
					"outlettype": [
						"",
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Insert into",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Insert into",
							"parameter_shortname": "Insert",
							"parameter_type": 2,
							"parameter_invisible": 1,
							"parameter_enum": [
								"Arrangement",
								"Session"
							],
							"parameter_mmax": 1,
							"parameter_unitstyle": 9,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								0
							]
						}
					},
					"id": "ui_target"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						580.0,
						40.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						82.0,
						40.0,
						16.0
					],
					"text": "Track",
					"textjustification": 0,
					"id": "label_track"
				}
			},
			{
				"box": {
					"maxclass": "umenu",
					"numinlets": 1,
					"numoutlets": 3,
					"patching_rect": [
						760.0,
						600.0,
						156.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						460.0,
						82.0,
						156.0,
						18.0
					],
					"outlettype": [
						"int",
						"",
						""
					],
					"parameter_enable": 0,
					"items": "<empty>",
					"fontsize": 10.0,
					"hint": "The audio track that Insert puts the take on",
					"id": "ui_tracks"
				}
			},
			{
				"box": {
					"maxclass": "live.text",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						630.0,
						196.0,
						20.0
					],
					"presentation": 1,
					"presentation_rect": [
						420.0,
						104.0,
						196.0,
						20.0
					],
					"outlettype": [
						"",
						""
					],
					"parameter_enable": 1,
					"varname": "Insert clip",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Insert clip",
							"parameter_shortname": "Insert",
							"parameter_type": 2,
							"parameter_invisible": 2,
							"parameter_enum": [
								"Insert clip",
								"Insert clip"
							],
							"parameter_mmax": 1
						}
					},
					"id": "ui_insert",
					"mode": 0,
					"text": "Insert clip",
					"texton": "Insert clip"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend take",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						980.0,
						490.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_take"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend reveal",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						980.0,
						520.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_reveal"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend target",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						980.0,
						550.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_target"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend track",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						980.0,
						600.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_track"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend insert",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						980.0,
						630.0,
						100.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_insert"
				}
			},
			{
				"box": {
					"maxclass": "live.text",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						1000.0,
						72.0,
						20.0
					],
					"presentation": 1,
					"presentation_rect": [
						624.0,
						4.0,
						72.0,
						20.0
					],
					"outlettype": [
						"",
						""
					],
					"parameter_enable": 1,
					"varname": "Audition",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Audition",
							"parameter_shortname": "Audition",
							"parameter_type": 2,
							"parameter_invisible": 2,
							"parameter_enum": [
								"Audition",
								"Audition"
							],
							"parameter_mmax": 1
						}
					},
					"id": "ui_audition",
					"mode": 0,
					"text": "Audition",
					"texton": "Audition"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend audition",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						1000.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_audition"
				}
			},
			{
				"box": {
					"maxclass": "live.dial",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						1040.0,
						48.0,
						48.0
					],
					"presentation": 1,
					"presentation_rect": [
						636.0,
						30.0,
						48.0,
						48.0
					],
					"outlettype": [
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Audition level",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Audition level",
							"parameter_shortname": "Level",
							"parameter_type": 0,
							"parameter_invisible": 1,
							"parameter_mmin": -70.0,
							"parameter_mmax": 6.0,
							"parameter_unitstyle": 4,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								0.0
							],
							"parameter_modmode": 0
						}
					},
					"id": "ui_level"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						670.0,
						150.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						130.0,
						150.0,
						16.0
					],
					"text": "Daemon folder (optional)",
					"textjustification": 0,
					"id": "label_home"
				}
			},
			{
				"box": {
					"maxclass": "textedit",
					"numinlets": 1,
					"numoutlets": 4,
					"patching_rect": [
						760.0,
						690.0,
						150.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						4.0,
						146.0,
						150.0,
						18.0
					],
					"outlettype": [
						"",
						"int",
						"",
						""
					],
					"parameter_enable": 0,
					"lines": 1,
					"wordwrap": 0,
					"outputmode": 1,
					"bangmode": 0,
					"fontsize": 10.0,
					"hint": "Only if the device cannot find it: the stage-bridge folder that holds bounces/",
					"id": "ui_home"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "route text",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						1080.0,
						690.0,
						70.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "home_text"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend home",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1080.0,
						720.0,
						90.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_home"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						710.0,
						156.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						160.0,
						130.0,
						156.0,
						16.0
					],
					"text": "stage-bridge command",
					"textjustification": 0,
					"id": "label_command"
				}
			},
			{
				"box": {
					"maxclass": "textedit",
					"numinlets": 1,
					"numoutlets": 4,
					"patching_rect": [
						760.0,
						730.0,
						156.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						160.0,
						146.0,
						156.0,
						18.0
					],
					"outlettype": [
						"",
						"int",
						"",
						""
					],
					"parameter_enable": 0,
					"lines": 1,
					"wordwrap": 0,
					"outputmode": 1,
					"bangmode": 0,
					"fontsize": 10.0,
					"hint": "Only if the device cannot start the daemon: the path of stage-bridge (or its folder), then Return",
					"id": "ui_command"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "route text",
					"numinlets": 2,
					"numoutlets": 2,
					"patching_rect": [
						1200.0,
						730.0,
						70.0,
						22.0
					],
					"outlettype": [
						"",
						""
					],
					"id": "command_text"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend command",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1200.0,
						760.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_command"
				}
			},
			{
				"box": {
					"maxclass": "live.comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						750.0,
						110.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						320.0,
						130.0,
						110.0,
						16.0
					],
					"text": "Ports: send / receive",
					"textjustification": 0,
					"id": "label_ports"
				}
			},
			{
				"box": {
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						770.0,
						50.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						320.0,
						146.0,
						50.0,
						16.0
					],
					"outlettype": [
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Send port",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Send port",
							"parameter_shortname": "Send port",
							"parameter_type": 1,
							"parameter_invisible": 1,
							"parameter_mmin": 1024.0,
							"parameter_mmax": 65535.0,
							"parameter_unitstyle": 0,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								9000
							]
						}
					},
					"id": "ui_sendport"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend port",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						770.0,
						90.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "port_sendport"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend sendport",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1030.0,
						770.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_sendport"
				}
			},
			{
				"box": {
					"maxclass": "live.numbox",
					"numinlets": 1,
					"numoutlets": 2,
					"patching_rect": [
						760.0,
						830.0,
						50.0,
						16.0
					],
					"presentation": 1,
					"presentation_rect": [
						376.0,
						146.0,
						50.0,
						16.0
					],
					"outlettype": [
						"",
						"float"
					],
					"parameter_enable": 1,
					"varname": "Receive port",
					"saved_attribute_attributes": {
						"valueof": {
							"parameter_longname": "Receive port",
							"parameter_shortname": "Receive port",
							"parameter_type": 1,
							"parameter_invisible": 1,
							"parameter_mmin": 1024.0,
							"parameter_mmax": 65535.0,
							"parameter_unitstyle": 0,
							"parameter_initial_enable": 1,
							"parameter_initial": [
								9001
							]
						}
					},
					"id": "ui_recvport"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend port",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						920.0,
						830.0,
						90.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "port_recvport"
				}
			},
			{
				"box": {
					"maxclass": "newobj",
					"text": "prepend recvport",
					"numinlets": 1,
					"numoutlets": 1,
					"patching_rect": [
						1030.0,
						830.0,
						110.0,
						22.0
					],
					"outlettype": [
						""
					],
					"id": "prepend_recvport"
				}
			},
			{
				"box": {
					"maxclass": "comment",
					"numinlets": 1,
					"numoutlets": 0,
					"patching_rect": [
						760.0,
						880.0,
						256.0,
						18.0
					],
					"presentation": 1,
					"presentation_rect": [
						440.0,
						146.0,
						256.0,
						18.0
					],
					"text": "STAGE Bridge",
					"fontsize": 10.0,
					"textjustification": 2,
					"id": "title"
				}
			}
		],
		"lines": [
			{
				"patchline": {
					"destination": [
						"plugout",
						0
					],
					"source": [
						"plugin",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"recorder",
						0
					],
					"source": [
						"plugin",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"plugout",
						1
					],
					"source": [
						"plugin",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"recorder",
						1
					],
					"source": [
						"plugin",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"level_0",
						0
					],
					"source": [
						"player",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"plugout",
						0
					],
					"source": [
						"level_0",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"level_1",
						0
					],
					"source": [
						"player",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"plugout",
						1
					],
					"source": [
						"level_1",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"level_0",
						1
					],
					"source": [
						"dbtoa",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"level_1",
						1
					],
					"source": [
						"dbtoa",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"router",
						0
					],
					"source": [
						"script",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"launcher",
						0
					],
					"source": [
						"router",
						11
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_launcher",
						0
					],
					"source": [
						"launcher",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_launcher",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"state",
						0
					],
					"source": [
						"router",
						15
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_saved",
						0
					],
					"source": [
						"state",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_saved",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"player",
						0
					],
					"source": [
						"router",
						12
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"audition_timepoint",
						0
					],
					"source": [
						"router",
						13
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"audition_gate",
						0
					],
					"source": [
						"router",
						14
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"audition_gate",
						1
					],
					"source": [
						"audition_timepoint",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"audition_start",
						0
					],
					"source": [
						"audition_gate",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_play",
						0
					],
					"source": [
						"audition_start",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_auditionstarted",
						0
					],
					"source": [
						"audition_start",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"player",
						0
					],
					"source": [
						"msg_play",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_auditionstarted",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_auditionended",
						0
					],
					"source": [
						"player",
						2
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_auditionended",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ready",
						0
					],
					"source": [
						"thisdevice",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_init",
						0
					],
					"source": [
						"ready",
						2
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"liveset",
						0
					],
					"source": [
						"ready",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_metro_on",
						0
					],
					"source": [
						"ready",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"metro",
						0
					],
					"source": [
						"msg_metro_on",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_tick",
						0
					],
					"source": [
						"metro",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_tick",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_init",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"observe_tempo",
						1
					],
					"source": [
						"liveset",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_tempo",
						0
					],
					"source": [
						"observe_tempo",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_tempo",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"observe_num",
						1
					],
					"source": [
						"liveset",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_num",
						0
					],
					"source": [
						"observe_num",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_num",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"observe_den",
						1
					],
					"source": [
						"liveset",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_den",
						0
					],
					"source": [
						"observe_den",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_den",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"observe_playing",
						1
					],
					"source": [
						"liveset",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_playing",
						0
					],
					"source": [
						"observe_playing",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_playing",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"udpsend",
						0
					],
					"source": [
						"router",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"udpreceive",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"timepoint",
						0
					],
					"source": [
						"router",
						2
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"armgate",
						0
					],
					"source": [
						"router",
						3
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"armgate",
						1
					],
					"source": [
						"timepoint",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"start",
						0
					],
					"source": [
						"armgate",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_rec_on",
						0
					],
					"source": [
						"start",
						2
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"stoptimer",
						0
					],
					"source": [
						"start",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_recstarted",
						0
					],
					"source": [
						"start",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"recorder",
						0
					],
					"source": [
						"msg_rec_on",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"stoptimer",
						1
					],
					"source": [
						"router",
						4
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"stoptimer",
						0
					],
					"source": [
						"router",
						5
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"stop",
						0
					],
					"source": [
						"stoptimer",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_rec_off",
						0
					],
					"source": [
						"stop",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"msg_recstopped",
						0
					],
					"source": [
						"stop",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"recorder",
						0
					],
					"source": [
						"msg_rec_off",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"recorder",
						0
					],
					"source": [
						"router",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_recstarted",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"msg_recstopped",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_instrument",
						0
					],
					"source": [
						"ui_instrument",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_instrument",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_bars",
						0
					],
					"source": [
						"ui_bars",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_bars",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_takes",
						0
					],
					"source": [
						"ui_takes",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_takes",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_mode",
						0
					],
					"source": [
						"ui_mode",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_mode",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prompt_text",
						0
					],
					"source": [
						"ui_prompt",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_prompt",
						0
					],
					"source": [
						"prompt_text",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_prompt",
						0
					],
					"source": [
						"prompt_text",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_prompt",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"generate_press",
						0
					],
					"source": [
						"ui_generate",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_prompt",
						0
					],
					"source": [
						"generate_press",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_generate",
						0
					],
					"source": [
						"generate_press",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_generate",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_cancel",
						0
					],
					"source": [
						"ui_cancel",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_cancel",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_status",
						0
					],
					"source": [
						"router",
						6
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_status",
						0
					],
					"source": [
						"prepend_status",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_progress",
						0
					],
					"source": [
						"router",
						7
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_progress",
						0
					],
					"source": [
						"prepend_progress",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_led",
						0
					],
					"source": [
						"router",
						10
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_take",
						0
					],
					"source": [
						"ui_results",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_take",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_reveal",
						0
					],
					"source": [
						"ui_reveal",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_reveal",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_target",
						0
					],
					"source": [
						"ui_target",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_target",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_track",
						0
					],
					"source": [
						"ui_tracks",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_track",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_insert",
						0
					],
					"source": [
						"ui_insert",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_insert",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_results",
						0
					],
					"source": [
						"router",
						8
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_tracks",
						0
					],
					"source": [
						"router",
						9
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_audition",
						0
					],
					"source": [
						"ui_audition",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_audition",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"dbtoa",
						0
					],
					"source": [
						"ui_level",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"home_text",
						0
					],
					"source": [
						"ui_home",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_home",
						0
					],
					"source": [
						"home_text",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_home",
						0
					],
					"source": [
						"home_text",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_home",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_home",
						0
					],
					"source": [
						"generate_press",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"command_text",
						0
					],
					"source": [
						"ui_command",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_command",
						0
					],
					"source": [
						"command_text",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_command",
						0
					],
					"source": [
						"command_text",
						1
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_command",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_prompt",
						0
					],
					"source": [
						"router",
						16
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_home",
						0
					],
					"source": [
						"router",
						17
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"ui_command",
						0
					],
					"source": [
						"router",
						18
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"port_sendport",
						0
					],
					"source": [
						"ui_sendport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"udpsend",
						0
					],
					"source": [
						"port_sendport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_sendport",
						0
					],
					"source": [
						"ui_sendport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_sendport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"port_recvport",
						0
					],
					"source": [
						"ui_recvport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"udpreceive",
						0
					],
					"source": [
						"port_recvport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"prepend_recvport",
						0
					],
					"source": [
						"ui_recvport",
						0
					]
				}
			},
			{
				"patchline": {
					"destination": [
						"script",
						0
					],
					"source": [
						"prepend_recvport",
						0
					]
				}
			}
		],
		"parameters": {
			"state": [
				"STAGE state",
				"State",
				0
			],
			"ui_instrument": [
				"Instrument",
				"Instrument",
				0
			],
			"ui_bars": [
				"Bars",
				"Bars",
				0
			],
			"ui_takes": [
				"Takes",
				"Takes",
				0
			],
			"ui_mode": [
				"Context",
				"Context",
				0
			],
			"ui_generate": [
				"Generate",
				"Generate",
				0
			],
			"ui_cancel": [
				"Cancel",
				"Cancel",
				0
			],
			"ui_reveal": [
				"Show file",
				"Show",
				0
			],
			"ui_target": [
				"Insert into",
				"Insert",
				0
			],
			"ui_insert": [
				"Insert clip",
				"Insert",
				0
			],
			"ui_audition": [
				"Audition",
				"Audition",
				0
			],
			"ui_level": [
				"Audition level",
				"Level",
				0
			],
			"ui_sendport": [
				"Send port",
				"Send port",
				0
			],
			"ui_recvport": [
				"Receive port",
				"Receive port",
				0
			],
			"inherited_shortname": 1
		},
		"dependency_cache": [
			{
				"name": "stage_device.js",
				"bootpath": "~/stage-bridge/max_for_live/src",
				"type": "TEXT",
				"implicit": 1
			},
			{
				"name": "stage_launcher.js",
				"bootpath": "~/stage-bridge/max_for_live/src",
				"type": "TEXT",
				"implicit": 1
			},
			{
				"name": "stage_logic.js",
				"bootpath": "~/stage-bridge/max_for_live/src",
				"type": "TEXT",
				"implicit": 1
			}
		],
		"latency": 0,
		"is_mpe": 0,
		"external_mpe_tuning_enabled": 0,
		"minimum_live_version": "",
		"minimum_max_version": "",
		"platform_compatibility": 0,
		"project": {
			"version": 1,
			"creationdate": 3590052493,
			"modificationdate": 3590052493,
			"viewrect": [
				0.0,
				0.0,
				300.0,
				500.0
			],
			"autoorganize": 1,
			"hideprojectwindow": 1,
			"showdependencies": 1,
			"autolocalize": 0,
			"contents": {
				"patchers": {},
				"media": {},
				"code": {},
				"data": {},
				"other": {}
			},
			"layout": {},
			"searchpath": {},
			"detailsvisible": 0,
			"amxdtype": 1633771873,
			"readonly": 0,
			"devpathtype": 0,
			"devpath": ".",
			"sortmode": 0,
			"viewmode": 0,
			"includepackages": 0
		},
		"autosave": 0
	}
}

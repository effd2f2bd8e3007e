// The wildvision review page. Everything it shows comes from the JSON block #wv-data and is
// put into the page as text (textContent) or as our own data: URIs, never as HTML.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("wv-data").textContent);
  var ITEMS = DATA.items;
  var FIELDS = DATA.decision_fields;
  var LABELS = DATA.labels;  // [[label, group], ...]
  var LABEL_GROUP = {};
  LABELS.forEach(function (lg) { LABEL_GROUP[lg[0]] = lg[1]; });
  var KEY = "wildvision-review:" + DATA.page_id;
  var $ = function (id) { return document.getElementById(id); };

  // -- state, kept in localStorage -----------------------------------------------------------
  var state = { decisions: {}, reviewer: "", heatmaps: DATA.has_heatmaps, seq: 0 };
  try {
    var saved = JSON.parse(window.localStorage.getItem(KEY) || "null");
    if (saved && typeof saved === "object") {
      state.decisions = saved.decisions || {};
      state.reviewer = saved.reviewer || "";
      state.seq = saved.seq || 0;
      if (typeof saved.heatmaps === "boolean") state.heatmaps = saved.heatmaps && DATA.has_heatmaps;
    }
  } catch (e) { /* storage unavailable: decisions live until the page closes */ }
  function save() {
    try { window.localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { /* full */ }
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function pct(p) { return p === null || p === undefined ? "" : p.toFixed(3); }

  // -- header --------------------------------------------------------------------------------
  $("title").textContent = DATA.title;
  document.title = DATA.title;
  $("summary").textContent = DATA.summary;
  $("reviewer").value = state.reviewer;
  $("reviewer").addEventListener("input", function () { state.reviewer = this.value; save(); });
  function fillSelect(sel, values) {
    values.forEach(function (v) { var o = el("option", "", v[1]); o.value = v[0]; sel.appendChild(o); });
  }
  var groups = [];
  ITEMS.forEach(function (it) { if (it.group && groups.indexOf(it.group) < 0) groups.push(it.group); });
  groups.sort();
  fillSelect($("filter-group"), [["", "all groups"]].concat(groups.map(function (g) { return [g, g]; })));
  var labelList = $("label-list");
  LABELS.forEach(function (lg) { var o = el("option"); o.value = lg[0]; o.label = lg[1]; labelList.appendChild(o); });
  $("heatmaps").checked = state.heatmaps;
  $("heatmaps").disabled = !DATA.has_heatmaps;

  // -- cards ---------------------------------------------------------------------------------
  var cards = ITEMS.map(function (it, i) {
    var card = el("div", "card");
    card.tabIndex = -1;
    card.dataset.index = String(i);
    var wrap = el("div", "thumbwrap");
    if (it.thumb) {
      var img = el("img", "thumb");
      img.alt = it.name;
      img.decoding = "async";
      wrap.appendChild(img);
    } else {
      wrap.appendChild(el("div", "missing", it.problem || "image unavailable"));
    }
    card.appendChild(wrap);
    var meta = el("div", "meta");
    // The file name in view, the whole source path on hover (both as text).
    meta.appendChild(el("div", "name", it.name.split(/[\\/]/).pop())).title = it.name;
    var line = el("div", "line");
    line.appendChild(el("span", "badge decision-" + it.decision, it.decision));
    line.appendChild(el("span", "grp", it.group ? it.group + " " + pct(it.probability) : ""));
    if (it.unfamiliar) line.appendChild(el("span", "tag", "unfamiliar"));
    if (it.known_image) line.appendChild(el("span", "tag", "known image"));
    meta.appendChild(line);
    meta.appendChild(el("div", "label", "model: " + (it.top_label || "") + " " + pct(it.top_label_probability)));
    meta.appendChild(el("div", "status"));
    card.appendChild(meta);
    card.addEventListener("click", function () { focusItem(i); });
    return card;
  });

  function decisionOf(i) { return state.decisions[ITEMS[i].key] || null; }
  function paint(i) {
    var it = ITEMS[i], card = cards[i], d = decisionOf(i);
    var img = card.querySelector("img.thumb");
    if (img) {
      var src = state.heatmaps && it.overlay ? it.overlay : it.thumb;
      if (img.getAttribute("src") !== src) img.src = src;
    }
    var st = card.querySelector(".status");
    card.classList.remove("is-confirm", "is-reject", "is-relabel");
    if (d) {
      card.classList.add("is-" + d.action);
      st.textContent = d.action + ": " + (d.reviewer_label || "(no label)") +
        (d.reviewer_group ? " [" + d.reviewer_group + "]" : "");
    } else {
      st.textContent = "not reviewed";
    }
  }

  // -- view: filter, sort, group -------------------------------------------------------------
  var visible = [];
  var current = -1;
  var DECISION_RANK = { flag: 0, review: 1, pass: 2 };
  function sortKey(mode) {
    var byName = function (a, b) { return ITEMS[a].name < ITEMS[b].name ? -1 : ITEMS[a].name > ITEMS[b].name ? 1 : a - b; };
    var byProb = function (a, b) { return (ITEMS[b].probability || 0) - (ITEMS[a].probability || 0) || a - b; };
    if (mode === "prob-asc") return function (a, b) { return -byProb(a, b) || a - b; };
    if (mode === "name") return byName;
    if (mode === "decision") return function (a, b) { return DECISION_RANK[ITEMS[a].decision] - DECISION_RANK[ITEMS[b].decision] || byProb(a, b); };
    if (mode === "group") return function (a, b) { var x = ITEMS[a].group || "", y = ITEMS[b].group || ""; return x < y ? -1 : x > y ? 1 : byProb(a, b); };
    return byProb;
  }
  function render() {
    var g = $("filter-group").value, dec = $("filter-decision").value, st = $("filter-status").value;
    var by = $("groupby").value, mode = $("sort").value;
    var idx = [];
    for (var i = 0; i < ITEMS.length; i++) {
      var it = ITEMS[i], done = !!decisionOf(i);
      if (g && it.group !== g) continue;
      if (dec && it.decision !== dec) continue;
      if (st === "todo" && done) continue;
      if (st === "done" && !done) continue;
      idx.push(i);
    }
    var cmp = sortKey(mode);
    if (by === "decision") idx.sort(function (a, b) { return DECISION_RANK[ITEMS[a].decision] - DECISION_RANK[ITEMS[b].decision] || cmp(a, b); });
    else if (by === "group") idx.sort(function (a, b) { var x = ITEMS[a].group || "", y = ITEMS[b].group || ""; return x < y ? -1 : x > y ? 1 : cmp(a, b); });
    else idx.sort(cmp);
    var box = $("items");
    box.textContent = "";
    var frag = document.createDocumentFragment();
    var last = null;
    idx.forEach(function (i) {
      if (by !== "none") {
        var head = by === "decision" ? ITEMS[i].decision : (ITEMS[i].group || "(none)");
        if (head !== last) { frag.appendChild(el("h2", "section", head)); last = head; }
      }
      paint(i);
      frag.appendChild(cards[i]);
    });
    box.appendChild(frag);
    visible = idx;
    $("shown").textContent = idx.length + " shown";
    if (visible.indexOf(current) < 0) current = -1;
    updateCounter();
  }
  function updateCounter() {
    var n = 0;
    for (var i = 0; i < ITEMS.length; i++) if (decisionOf(i)) n++;
    $("counter").textContent = n + " / " + ITEMS.length + " reviewed";
    $("progress").style.width = (ITEMS.length ? 100 * n / ITEMS.length : 0) + "%";
  }
  ["filter-group", "filter-decision", "filter-status", "groupby", "sort"].forEach(function (id) {
    $(id).addEventListener("change", render);
  });
  $("heatmaps").addEventListener("change", function () {
    state.heatmaps = this.checked; save(); cards.forEach(function (c, i) { paint(i); });
  });

  // -- focus and decisions -------------------------------------------------------------------
  function focusItem(i) {
    if (current >= 0) cards[current].classList.remove("current");
    current = i;
    if (i < 0) return;
    cards[i].classList.add("current");
    cards[i].focus({ preventScroll: true });
    cards[i].scrollIntoView({ block: "nearest" });
  }
  function move(step) {
    if (!visible.length) return;
    var pos = visible.indexOf(current);
    pos = pos < 0 ? 0 : Math.min(visible.length - 1, Math.max(0, pos + step));
    focusItem(visible[pos]);
  }
  function decide(i, action, label) {
    var it = ITEMS[i];
    if (action === null) {
      delete state.decisions[it.key];
    } else {
      state.decisions[it.key] = {
        action: action,
        reviewer_label: label || "",
        reviewer_group: label ? (LABEL_GROUP[label] || "") : (action === "reject" ? "benign" : ""),
        reviewed_at: new Date().toISOString(),
        seq: ++state.seq
      };
    }
    save();
    paint(i);
    updateCounter();
    if (action !== null) move(1);
  }
  function openRelabel(i) {
    var box = $("relabel");
    box.hidden = false;
    $("relabel-name").textContent = ITEMS[i].name;
    var input = $("relabel-input");
    input.value = "";
    input.dataset.index = String(i);
    $("relabel-error").textContent = "";
    input.focus();
  }
  function closeRelabel() {
    $("relabel").hidden = true;
    if (current >= 0) cards[current].focus({ preventScroll: true });
  }
  $("relabel-input").addEventListener("keydown", function (ev) {
    if (ev.key === "Escape") { ev.preventDefault(); closeRelabel(); return; }
    if (ev.key !== "Enter") return;
    ev.preventDefault();
    var label = this.value.trim();
    if (!Object.prototype.hasOwnProperty.call(LABEL_GROUP, label)) {
      $("relabel-error").textContent = "unknown label: " + label;
      return;
    }
    var i = parseInt(this.dataset.index, 10);
    closeRelabel();
    decide(i, "relabel", label);
  });
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var k = ev.key;
    if (k === "?") { $("help").hidden = !$("help").hidden; ev.preventDefault(); return; }
    if (k === "Escape") { $("help").hidden = true; return; }
    if (k === "h") { if (DATA.has_heatmaps) { $("heatmaps").checked = !$("heatmaps").checked; $("heatmaps").dispatchEvent(new Event("change")); } return; }
    if (k === "j" || k === "ArrowDown" || k === "ArrowRight") { move(1); ev.preventDefault(); return; }
    if (k === "k" || k === "ArrowUp" || k === "ArrowLeft") { move(-1); ev.preventDefault(); return; }
    if (current < 0) { if ("cxyrnu".indexOf(k) >= 0) move(0); if (current < 0) return; }
    var it = ITEMS[current];
    if (k === "c" || k === "y") { decide(current, "confirm", it.confirm_label); ev.preventDefault(); }
    else if (k === "x" || k === "n") { decide(current, "reject", it.reject_label); ev.preventDefault(); }
    else if (k === "r") { openRelabel(current); ev.preventDefault(); }
    else if (k === "u") { decide(current, null); ev.preventDefault(); }
  });

  // -- export ----------------------------------------------------------------------------------
  function rows() {  // in decision order: a later decision on the same image wins
    var done = [];
    for (var j = 0; j < ITEMS.length; j++) if (decisionOf(j)) done.push(j);
    done.sort(function (a, b) { return (decisionOf(a).seq || 0) - (decisionOf(b).seq || 0) || a - b; });
    var out = [];
    done.forEach(function (i) {
      var d = decisionOf(i);
      var it = ITEMS[i];
      out.push({
        image_sha256: it.sha256, source: it.name, path: it.path, model: it.model,
        model_version: it.model_version, original_decision: it.decision,
        original_group: it.group || "", original_probability: it.probability,
        action: d.action, reviewer_label: d.reviewer_label, reviewer_group: d.reviewer_group,
        reviewer: state.reviewer, reviewed_at: d.reviewed_at, results_sha256: DATA.results_sha256
      });
    });
    return out;
  }
  function csvCell(v) {
    var s = v === null || v === undefined ? "" : String(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function download(name, text, type) {
    var url = URL.createObjectURL(new Blob([text], { type: type }));
    var a = el("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  }
  function stamp() { return new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19); }
  $("export-jsonl").addEventListener("click", function () {
    var text = rows().map(function (r) {
      var o = {}; FIELDS.forEach(function (f) { o[f] = r[f]; }); return JSON.stringify(o);
    }).join("\n");
    download("wildvision-decisions-" + stamp() + ".jsonl", text ? text + "\n" : "", "application/x-ndjson");
  });
  $("export-csv").addEventListener("click", function () {
    var lines = [FIELDS.join(",")];
    rows().forEach(function (r) { lines.push(FIELDS.map(function (f) { return csvCell(r[f]); }).join(",")); });
    download("wildvision-decisions-" + stamp() + ".csv", lines.join("\r\n") + "\r\n", "text/csv");
  });

  render();
  document.body.dataset.ready = "1";
})();

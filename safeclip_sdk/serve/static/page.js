// The search page: two deployments of the served collection side by side, through /v1/search.
// Payload text is only ever set as textContent; the API key lives in this variable only.
"use strict";

(() => {
  const IMAGE_FILE = /\.(png|jpe?g|gif|webp|bmp|tiff?)$/i;
  const CAPTION_KEYS = ["caption", "text", "title", "description"];
  const SIDES = ["left", "right"];
  const SCORE = {};  // the reason "the unsafe score is at or above the threshold"
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  let apiKey = null;
  let config = null;
  let generation = 0;

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    const response = await fetch(path, { ...options, headers });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error.message; } catch (ignored) { /* not our JSON error */ }
      if (response.status === 401) $("key-form").hidden = false;
      throw new Error(message);
    }
    return response;
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  function threshold() {
    const value = parseFloat($("threshold").value);
    return Number.isFinite(value) ? value : null;
  }

  async function load() {
    try {
      config = await (await api("/page/deployments")).json();
    } catch (error) {
      setStatus(error.message, true);
      document.body.dataset.state = "error";
      return;
    }
    $("collection").textContent = config.collection;
    if (config.unsafe_threshold !== null && !$("threshold").value) $("threshold").value = config.unsafe_threshold;
    const ids = config.deployments.map((d) => d.id);
    for (const [side, fallback] of [["left", config.compare], ["right", config.recommended]]) {
      const select = $(side).querySelector("select");
      select.replaceChildren(...config.deployments.map((d) => new Option(d.title, d.id)));
      select.value = ids.includes(params.get(side)) ? params.get(side) : fallback;
      select.onchange = search;
    }
    if ($("query").value.trim()) {
      await search();
    } else {
      setStatus("type a query");
      document.body.dataset.state = "ready";
    }
  }

  async function search(event) {
    if (event) event.preventDefault();
    const query = $("query").value.trim();
    if (!query || !config) return;
    const current = ++generation;
    document.body.dataset.state = "searching";
    setStatus("searching…");
    const shown = new URLSearchParams({ q: query, k: $("k").value, left: $("left").querySelector("select").value,
                                        right: $("right").querySelector("select").value });
    if (threshold() !== null) shown.set("threshold", String(threshold()));
    history.replaceState(null, "", "?" + shown);
    const outcomes = await Promise.all(SIDES.map((side) => runColumn(side, query, current)));
    if (current !== generation) return;
    const failed = outcomes.filter((ok) => !ok).length;
    setStatus(failed ? "a search failed (see its column)" : `results for “${query}”`, failed > 0);
    document.body.dataset.state = "done";
  }

  async function runColumn(side, query, current) {
    const column = $(side);
    const meta = column.querySelector(".meta");
    const list = column.querySelector(".tiles");
    const deployment = config.deployments.find((d) => d.id === column.querySelector("select").value);
    const limit = threshold();
    const body = { ...deployment.search, input: query, k: Math.max(1, Math.min(50, parseInt($("k").value, 10) || 5)) };
    if (body.max_score === "threshold" && limit !== null && limit !== config.unsafe_threshold) body.max_score = limit;
    column.dataset.deployment = deployment.id;
    try {
      const answer = await (await api("/v1/search", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      })).json();
      if (current !== generation) return true;
      const filter = body.max_score === undefined ? ""
        : `, unsafe score < ${body.max_score === "threshold" ? config.unsafe_threshold : body.max_score}`;
      meta.textContent = `${answer.mode} search of ${answer.collection}` +
        (answer.vector ? ` (vector ${answer.vector})` : "") + filter;
      meta.className = "meta";
      const loads = [];
      list.replaceChildren(...answer.results.map((result, i) => tile(result, i + 1, limit, loads)));
      await Promise.all(loads);
      return true;
    } catch (error) {
      if (current !== generation) return true;
      list.replaceChildren();
      meta.textContent = error.message;
      meta.className = "meta error";
      return false;
    }
  }

  function tile(result, rank, limit, loads) {
    const item = document.createElement("li");
    const payload = result.payload || {};
    const image = imagePath(payload);
    const caption = CAPTION_KEYS.map((key) => payload[key]).find((v) => typeof v === "string");
    item.className = "tile";
    item.dataset.id = String(result.id);
    if (image) {
      const img = document.createElement("img");
      img.alt = caption || image;
      if (caption) item.title = caption;
      loads.push(thumbnail(img, image));
      item.append(img);
    } else {
      item.append(paragraph("caption", caption || `item ${result.id}`));
    }
    const score = typeof result.unsafe_score === "number" ? result.unsafe_score : null;
    item.dataset.unsafeScore = score === null ? "" : String(score);
    const reasons = unsafeReasons(score, result.category_scores, limit);
    let verdict = "";
    if (reasons === null) item.classList.add("unknown");
    else if (reasons.length) {
      item.classList.add("unsafe");
      const categories = reasons.filter((reason) => reason !== SCORE);
      verdict = "UNSAFE" + (categories.length ? ` (${categories.join(", ")})` : "");
    }
    else verdict = "safe";
    item.append(paragraph("label", `${rank}. ${verdict} · ${score === null ? "no score" : String(Number(score.toPrecision(3)))}`));
    return item;
  }

  // why a result is unsafe ([] if it is not), or null when nothing says (no threshold, no categories)
  function unsafeReasons(score, categoryScores, limit) {
    const reasons = [];
    let judged = false;
    if (score !== null && limit !== null) {
      judged = true;
      if (score >= limit) reasons.push(SCORE);
    }
    for (const [key, { category, threshold: bound }] of Object.entries(config.category_thresholds)) {
      const value = categoryScores ? categoryScores[key] : undefined;
      if (typeof value !== "number") continue;
      judged = true;
      if (value >= bound) reasons.push(category);
    }
    return judged ? reasons : null;
  }

  function imagePath(payload) {
    return Object.values(payload).find((v) => typeof v === "string" && IMAGE_FILE.test(v)) || null;
  }

  async function thumbnail(img, path) {
    try {
      const blob = await (await api("/page/thumbnail?path=" + encodeURIComponent(path))).blob();
      img.src = URL.createObjectURL(blob);
    } catch (error) {
      img.alt = `${path}: ${error.message}`;
    }
  }

  function paragraph(className, text) {
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    return p;
  }

  $("query").value = params.get("q") || "";
  if (params.get("k")) $("k").value = params.get("k");
  if (params.get("threshold")) $("threshold").value = params.get("threshold");
  $("search").addEventListener("submit", search);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("key").value;
    $("key").value = "";
    $("key-form").hidden = true;
    if (config) search(); else load();
  });
  load();
})();

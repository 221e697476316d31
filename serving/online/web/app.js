// The curation page: the service's suggestions to rate (the posterior strategy or Active-PAM) (keys 1-5 or clicks), and the user's album
// re-ranked by the service after every rating. Plain ES module, no build step; it talks only to
// the service's public API under /v1 (same origin).

import { renderTaste } from "./taste.js";

const API = "/v1";
const SUGGESTIONS = 4;          // photos offered at once (the service's batch mode)
const MAX_CANDIDATES = 1000;    // the re-rank endpoint's limit per call
const THUMB = (id, size) => `${API}/photos/thumbnail?image_id=${encodeURIComponent(id)}&size=${size}`;

const $ = (sel) => document.querySelector(sel);
const state = {
  user: null,
  album: [],                    // image ids
  ratings: new Map(),           // image id -> score given
  ranking: [],                  // image ids, best first
  previousRank: new Map(),      // image id -> rank before the last rating
  suggestions: [],
  focus: 0,
  busy: false,
};

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(method, path, body) {
  const response = await fetch(API + path, {
    method,
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const userPath = () => `/users/${encodeURIComponent(state.user)}`;

function showError(message) {
  const el = $("#error");
  el.textContent = message;
  el.hidden = !message;
}

// ---------------------------------------------------------------- loading
async function loadAlbum() {
  let album;
  try {
    album = await api("GET", `${userPath()}/album`);
  } catch (err) {
    if (err.code === "no_such_endpoint") {
      throw new Error("this service has no GET /v1/users/{id}/album endpoint, which the page needs " +
                      "to list the album it re-ranks");
    }
    if (err.code === "unknown_user") {
      throw new Error(`no user "${state.user}" yet: register an album first ` +
                      `(POST /v1/users/${state.user}/album with {"image_ids": [...]})`);
    }
    throw err;
  }
  state.album = album.image_ids;
  state.ratings = new Map((album.ratings || []).map((r) => [r.image_id, r.score]));
}

async function rerankAll() {
  // one call per 1,000 candidates; the personalized scores are absolute, so replies merge by score
  const calls = [];
  for (let i = 0; i < state.album.length; i += MAX_CANDIDATES) {
    calls.push(api("POST", `${userPath()}/rerank`, { candidates: state.album.slice(i, i + MAX_CANDIDATES) }));
  }
  const replies = await Promise.all(calls);
  const rows = [];
  for (const reply of replies) {
    reply.image_ids.forEach((id, k) => rows.push({ id, score: reply.scores[k], generic: reply.generic_scores[k] }));
  }
  rows.sort((a, b) => b.score - a.score);
  return { rows, reply: replies[0] };
}

async function refresh() {
  const [next, ranked, user, taste] = await Promise.all([
    api("GET", `${userPath()}/next?n=${SUGGESTIONS}`),
    rerankAll(),
    api("GET", userPath()),
    api("GET", `${userPath()}/taste`),
  ]);
  renderTaste($("#taste"), taste);
  state.previousRank = new Map(state.ranking.map((id, k) => [id, k]));
  state.ranking = ranked.rows.map((r) => r.id);
  state.suggestions = next.image_ids;
  state.focus = Math.min(state.focus, Math.max(0, state.suggestions.length - 1));
  renderSuggestions(next);
  renderAlbum(ranked, user);
}

// ---------------------------------------------------------------- rendering
function renderSuggestions(next) {
  const list = $("#suggestions");
  list.replaceChildren();
  const chosen = next.strategy === "posterior" ? "(the photos whose ratings tell most about your taste)"
    : "(chosen by Active-PAM to learn your taste fastest)";
  $("#phase").textContent = next.phase === "seed" ? "(a first random set, as Active-PAM starts)"
    : next.phase === "active" ? chosen : "(every photo is rated)";
  const template = $("#suggestion-template");
  state.suggestions.forEach((id, k) => {
    const item = template.content.firstElementChild.cloneNode(true);
    item.dataset.imageId = id;
    item.classList.toggle("focused", k === state.focus);
    const img = item.querySelector("img");
    img.src = THUMB(id, 256);
    img.alt = id;
    const stars = item.querySelector(".stars");
    for (let s = 1; s <= 5; s++) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = String(s);
      button.dataset.score = String(s);
      button.title = `rate ${s}`;
      button.addEventListener("click", (event) => { event.stopPropagation(); rate(id, s); });
      stars.append(button);
    }
    item.addEventListener("click", () => { state.focus = k; highlight(); });
    list.append(item);
  });
  list.dataset.state = "ready";
}

function highlight() {
  document.querySelectorAll("#suggestions .suggestion").forEach((el, k) => {
    el.classList.toggle("focused", k === state.focus);
  });
}

function renderAlbum(ranked, user) {
  const list = $("#album");
  const template = $("#card-template");
  const cards = ranked.rows.map((row, rank) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.imageId = row.id;
    card.dataset.rank = String(rank + 1);
    card.dataset.score = row.score.toFixed(4);
    const img = card.querySelector("img");
    img.src = THUMB(row.id, 256);
    img.alt = row.id;
    card.querySelector(".rank").textContent = `#${rank + 1}`;
    card.querySelector(".score").textContent = row.score.toFixed(2);
    const before = state.previousRank.get(row.id);
    const move = card.querySelector(".move");
    if (before !== undefined && before !== rank) {
      move.textContent = before > rank ? `▲${before - rank}` : `▼${rank - before}`;
      move.classList.add(before > rank ? "up" : "down");
    }
    if (state.ratings.has(row.id)) {
      card.classList.add("rated");
      card.dataset.rating = String(state.ratings.get(row.id));
    }
    return card;
  });
  list.replaceChildren(...cards);
  list.dataset.nRatings = String(user.n_ratings);
  const gain = user.gain && user.gain.value !== null && user.gain.value !== undefined
    ? `; estimated gain over the generic ranking ${user.gain.value >= 0 ? "+" : ""}${user.gain.value.toFixed(3)} rho`
    : user.n_ratings ? `; a gain estimate needs ${user.gain.min_ratings} ratings` : "";
  $("#album-note").textContent = ranked.reply.personalized
    ? `(personalized on your ${user.n_ratings} ratings)` : "(generic scores: rate photos to personalize)";
  $("#status").textContent = `${state.user}: ${user.album_size} photos, ${user.n_ratings} rated${gain}. ` +
    `Model ${user.model_version}.`;
}

// ---------------------------------------------------------------- rating
async function rate(imageId, score) {
  if (state.busy) return;
  state.busy = true;
  $("#suggestions").dataset.state = "busy";
  try {
    const requestId = (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
    await api("POST", `${userPath()}/ratings`, { ratings: [{ image_id: imageId, score }], request_id: requestId });
    state.ratings.set(imageId, score);
    await refresh();
    showError("");
  } catch (err) {
    showError(`rating ${imageId} failed: ${err.message}`);
    $("#suggestions").dataset.state = "ready";
  } finally {
    state.busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.key >= "1" && event.key <= "5" && state.suggestions.length) {
    event.preventDefault();
    rate(state.suggestions[state.focus], Number(event.key));
  } else if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
    event.preventDefault();
    const n = state.suggestions.length;
    if (n) {
      state.focus = (state.focus + (event.key === "ArrowRight" ? 1 : n - 1)) % n;
      highlight();
    }
  }
});

// ---------------------------------------------------------------- search
// The engine's top N (GET /v1/search), re-ranked for the user by the service within a deadline;
// past it, or when the service cannot personalize, the engine's order stays and the note says why.
const SEARCH_WINDOW = 200;
const SEARCH_SHOWN = 24;
const RERANK_DEADLINE_MS = Number(new URLSearchParams(window.location.search).get("deadline")) || 50;

async function rerankWithin(ids, ms) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), ms);
  try {
    const response = await fetch(`${API}${userPath()}/rerank`, {
      method: "POST", signal: abort.signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ candidates: ids.slice(0, MAX_CANDIDATES) }),
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) return { reason: `the service answered ${response.status} ${data && data.error}: ${data && data.detail}` };
    if (!data.personalized) return { reason: data.fallback || "the service used the generic score" };
    return { reply: data };
  } catch (err) {
    return { reason: err.name === "AbortError" ? `the re-rank did not answer within ${ms} ms`
      : `the personalization service is unreachable (${err.message})` };
  } finally {
    clearTimeout(timer);
  }
}

function renderStrip(list, ids, scores) {
  const template = $("#card-template");
  list.replaceChildren(...ids.slice(0, SEARCH_SHOWN).map((id, k) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.imageId = id;
    card.dataset.score = scores[k].toFixed(4);
    const img = card.querySelector("img");
    img.src = THUMB(id, 128);
    img.alt = id;
    card.querySelector(".rank").textContent = `#${k + 1}`;
    card.querySelector(".score").textContent = scores[k].toFixed(2);
    return card;
  }));
}

async function search(query) {
  const section = $("#search");
  section.hidden = false;
  section.dataset.state = "busy";
  let found;
  try {
    found = await api("GET", `/search?q=${encodeURIComponent(query)}&n=${SEARCH_WINDOW}`);
  } catch (err) {
    section.dataset.state = "error";
    showError(err.code === "no_such_endpoint" ? "this service has no search endpoint (GET /v1/search)" : err.message);
    return;
  }
  renderStrip($("#search-engine"), found.image_ids, found.scores);
  const started = performance.now();
  const { reply, reason } = found.image_ids.length ? await rerankWithin(found.image_ids, RERANK_DEADLINE_MS)
    : { reason: "no results" };
  const took = performance.now() - started;
  if (reply) {
    renderStrip($("#search-personal"), reply.image_ids, reply.scores);
  } else {
    renderStrip($("#search-personal"), found.image_ids, found.scores);
  }
  section.dataset.personalized = String(Boolean(reply));
  $("#search-note").textContent = `(${found.image_ids.length} results for "${query}"; ` + (reply
    ? `re-ranked on your ${reply.n_ratings} ratings in ${took.toFixed(0)} ms)` : `not personalized: ${reason})`);
  section.dataset.state = "ready";
}

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = $("#search-input").value.trim();
  if (query && state.user) search(query);
});

// ---------------------------------------------------------------- start
async function open(user) {
  state.user = user;
  state.ranking = [];
  state.previousRank = new Map();
  $("#user-input").value = user;
  $("#status").textContent = `loading ${user}…`;
  try {
    await loadAlbum();
    await refresh();
    showError("");
  } catch (err) {
    $("#status").textContent = "";
    showError(err.message);
  }
}

$("#user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("#user-input").value.trim();
  const url = new URL(window.location.href);
  url.searchParams.set("user", user);
  window.history.replaceState(null, "", url);
  open(user);
});

open(new URLSearchParams(window.location.search).get("user") || "you");

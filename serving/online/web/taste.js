// The taste panel of the curation page: what the user's personal model has learnt (GET
// /v1/users/{id}/taste), redrawn after every rating. Each row: a feature, a bar for the change in
// the user's score per standard deviation of it (green up, red down), its uncertainty, and a
// muted look when the ratings cannot support it yet.

const SHOWN = 5;  // rows per block: the largest effects

function row(item, scale) {
  const li = document.createElement("li");
  li.className = `taste-row ${item.effect >= 0 ? "likes" : "dislikes"}${item.supported ? "" : " unsupported"}`;
  li.dataset.key = item.key;
  li.dataset.effect = item.effect.toFixed(4);
  li.dataset.supported = String(item.supported);
  const name = document.createElement("span");
  name.className = "taste-name";
  name.textContent = item.name;
  const bar = document.createElement("span");
  bar.className = "taste-bar";
  const fill = document.createElement("span");
  fill.style.width = `${Math.round(100 * Math.min(1, Math.abs(item.effect) / scale))}%`;
  bar.append(fill);
  const value = document.createElement("span");
  value.className = "taste-value";
  const sign = item.effect >= 0 ? "+" : "−";
  value.textContent = `${sign}${Math.abs(item.effect).toFixed(2)}` + (item.std === null ? "" : ` ± ${item.std.toFixed(2)}`);
  value.title = item.supported ? "score change per standard deviation of this feature"
    : "not supported yet: too few ratings, or not different enough from zero";
  li.append(name, bar, value);
  return li;
}

export function renderTaste(section, taste) {
  const all = [...taste.attributes, ...taste.content];
  const scale = Math.max(1e-6, ...all.map((r) => Math.abs(r.effect)));
  for (const block of ["attributes", "content"]) {
    const list = section.querySelector(`.taste-${block}`);
    list.replaceChildren(...taste[block].slice(0, SHOWN).map((r) => row(r, scale)));
  }
  section.dataset.nRatings = String(taste.n_ratings);
  const supported = all.filter((r) => r.supported).length;
  section.querySelector(".taste-note").textContent = taste.n_ratings
    ? `from your ${taste.n_ratings} ratings; ${supported} of ${all.length} effects are clear so far`
    : "rate photos and your taste appears here";
}

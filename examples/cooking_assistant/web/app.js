// The cooking assistant in the browser: the photo never leaves the phone. Static files only; sw.js keeps the
// app, the runtime (lib/) and the web bundle (bundle/, from `malm bundle web`) for offline use.
import { Retriever } from "./lib/malm-web.js";

const $ = (id) => document.getElementById(id);
let retriever = null;
let allergens = {};
let lastFile = null;

function el(tag, text, cls) {  // textContent only: recipe text is never parsed as HTML
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function status(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }

// Same-origin bundles only: ?bundle=other/ picks another web bundle of this site.
function bundleUrl() {
  const given = new URLSearchParams(location.search).get("bundle") || "bundle/";
  const url = new URL(given, location.href);
  if (url.origin !== location.origin) throw new Error(`bundle ${given}: only this site's bundles are loaded`);
  return url.href;
}

function exclusions() {
  const terms = [];
  for (const box of document.querySelectorAll("input[name=allergen]:checked")) terms.push(...allergens[box.value]);
  terms.push(...$("exclude").value.split(",").map((t) => t.trim()).filter(Boolean));
  return [...new Set(terms)];
}

async function start() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js").catch((e) => console.warn("no offline mode:", e));
  }
  allergens = await (await fetch("allergens.json")).json();
  for (const name of Object.keys(allergens)) {
    const label = el("label");
    const box = el("input"); box.type = "checkbox"; box.value = name; box.name = "allergen";
    box.addEventListener("change", () => lastFile && search(lastFile));
    label.append(box, " " + name);
    $("allergens").append(label);
  }
  status("Loading the recipe index…");
  retriever = await Retriever.load(bundleUrl());
  const info = retriever.info();
  if (retriever.canRerank) {
    // Re-ranking is on by default where the bundle ships a trained matching head (or says so).
    const label = el("label");
    label.style.display = "block";
    const box = el("input"); box.type = "checkbox"; box.id = "rerank";
    box.checked = info.rerank_kind === "matching_head" || info.rerank_default === true;
    box.addEventListener("change", () => lastFile && search(lastFile));
    label.append(box, ` Re-rank the candidates (${info.rerank_kind.replace("_", " ")})`);
    $("k").parentElement.after(label);
  }
  if (retriever.canAdd) $("add").hidden = false;
  $("about").textContent = `${info.encoder} · ${info.backend} · ${info.verification.files} files verified · ` +
    `loaded in ${info.load_ms} ms`;
  status(`${retriever.size} recipes in the index. Add a photo to start.`);
}

async function search(file) {
  lastFile = file;
  $("preview").src = URL.createObjectURL(file); $("preview").style.display = "block";
  if (!retriever) return;
  const terms = exclusions();
  status("Searching…");
  const t0 = performance.now();
  let hits;
  try {
    hits = await retriever.search(file, { k: Number($("k").value), rerank: $("rerank")?.checked ?? false,
      excludeIngredients: terms });
  } catch (e) {
    status(`${file.name || "photo"}: ${e.message}`, true); $("results").replaceChildren(); return;
  }
  status(`Top ${hits.length} of ${retriever.size} recipes (${Math.round(performance.now() - t0)} ms)` +
         (terms.length ? `, without ${terms.join(", ")}` : ""));
  $("results").replaceChildren(...hits.map((h) => {
    const card = el("div", undefined, "hit"); card.dataset.recipeId = h.recipe_id;
    const title = el("h3", `${h.rank}. ${h.title} `); title.append(el("span", `score ${h.score.toFixed(3)}`, "score"));
    const list = el("ul"); h.ingredients.forEach((i) => list.append(el("li", i)));
    card.append(title, list);
    return card;
  }));
}

$("photo").addEventListener("change", (e) => e.target.files[0] && search(e.target.files[0]));
$("k").addEventListener("change", () => lastFile && search(lastFile));
$("exclude").addEventListener("change", () => lastFile && search(lastFile));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) search(e.dataTransfer.files[0]);
});
$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!retriever) return;
  const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter(Boolean);
  const title = $("add-title").value.trim();
  status("Adding…");
  try {
    const [id] = await retriever.addRecipes([{ title, ingredients: lines("add-ingredients"), instructions: lines("add-steps") }]);
    status(`Added “${title}” (${id}); the index now holds ${retriever.size} recipes.`);
    $("add-form").reset();
    if (lastFile) search(lastFile);
  } catch (err) {
    status(`could not add the recipe: ${err.message}`, true);
  }
});
start().catch((err) => status(`cannot load the recipe index: ${err.message}`, true));

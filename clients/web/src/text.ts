// malm.edge_index.records.name_words / singular: how an ingredient filter term is normalised before it is
// matched against the recipes' detected ingredient names (which were normalised the same way).

const WORD = /[a-zà-ÿ]+(?:['-][a-zà-ÿ]+)*/g;

export function singular(word: string): string {
  if (word.length > 4 && word.endsWith("ies")) return `${word.slice(0, -3)}y`;
  if (word.length > 4 && ["oes", "ches", "shes", "sses", "xes"].some((s) => word.endsWith(s))) return word.slice(0, -2);
  if (word.length > 3 && word.endsWith("s") && !["ss", "us", "is"].some((s) => word.endsWith(s))) return word.slice(0, -1);
  return word;
}

export function nameWords(text: string): string[] {
  return (text.toLowerCase().match(WORD) ?? []).map(singular);
}

// malm.edge_index.records.ingredient_name: "2 cups chopped fresh tomatoes, peeled" -> "tomato". The unit and
// preparation words come from the web manifest (`names.units`, written from the Python list).
export function ingredientName(line: string, units: Set<string>): string {
  const text = line.toLowerCase().replace(/\([^)]*\)/g, " ").split(",")[0];
  return (text.match(WORD) ?? []).filter((w) => !units.has(w)).map(singular).join(" ");
}

export function ingredientNames(lines: string[], units: Set<string>): string[] {
  const names: string[] = [];
  for (const line of lines) {
    const name = ingredientName(line, units);
    if (name && !names.includes(name)) names.push(name);
  }
  return names;
}

// malm.text: the recipe tokenizer (cleaning, tokens, fixed-shape id arrays) the recipe encoder was trained on.
const PAD_ID = 0, START_ID = 1, END_ID = 2, UNK_ID = 3;
const FRACTIONS: Record<string, string> = {
  "½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4", "⅕": "1/5", "⅖": "2/5", "⅗": "3/5",
  "⅘": "4/5", "⅙": "1/6", "⅚": "5/6", "⅐": "1/7", "⅛": "1/8", "⅜": "3/8", "⅝": "5/8", "⅞": "7/8",
  "⅑": "1/9", "⅒": "1/10",
};
// Python's re classes for str patterns: \d = Nd, \w = letters + numbers + "_", [^\W\d_] = letters + non-decimal numbers.
const UNICODE_FRACTION = new RegExp(`(\\p{Nd}?)([${Object.keys(FRACTIONS).join("")}])`, "gu");
const FRACTION_SLASH = /(\p{Nd})\s*[⁄∕/]\s*(\p{Nd})/gu;
const BROKEN_FRACTION = /(?<![\p{L}\p{N}_./])(12|13|14|18|23|34)(?= )/gu;
const TOKEN = /\p{Nd}+\/\p{Nd}+|\p{Nd}+(?:[.,]\p{Nd}+)?|[\p{L}\p{Nl}\p{No}]+(?:['’-][\p{L}\p{Nl}\p{No}]+)*|[^\p{L}\p{N}_\s]/gu;

function htmlUnescape(text: string): string {
  // A <textarea>'s content is RCDATA: entities are decoded, tags are kept as text (as Python's html.unescape).
  if (typeof document === "undefined") {
    return text.replace(/&(amp|lt|gt|quot|#39|apos);/g, (_, e: string) =>
      ({ amp: "&", lt: "<", gt: ">", quot: '"', "#39": "'", apos: "'" })[e] ?? _);
  }
  const ta = document.createElement("textarea");
  ta.innerHTML = text;
  return ta.value;
}

export function cleanText(text: string): string {
  if (text.includes("&")) text = htmlUnescape(htmlUnescape(text));
  const ascii = /^[\x00-\x7f]*$/.test(text);
  if (!ascii) {
    text = text.replace(UNICODE_FRACTION, (_, d: string, f: string) => (d ? `${d} ` : "") + FRACTIONS[f]);
    text = text.normalize("NFKC");
  }
  if (!ascii || text.includes("/")) text = text.replace(FRACTION_SLASH, "$1/$2");
  return text.split(/\s+/).filter(Boolean).join(" ").toLowerCase();
}

export function cleanIngredient(text: string): string {
  return cleanText(text).replace(BROKEN_FRACTION, (m: string) => `${m[0]}/${m[1]}`);
}

export function tokenize(text: string): string[] {
  return text.match(TOKEN) ?? [];
}

export interface TextLimits {
  max_title_tokens: number;
  max_ingredients: number;
  max_instructions: number;
  max_tokens: number;
}

export class Vocabulary {
  private readonly index = new Map<string, number>();

  constructor(readonly words: string[]) {
    if (words.slice(0, 4).join(" ") !== "<pad> <start> <end> <unk>") throw new Error("vocabulary must start with the 4 specials");
    words.forEach((w, i) => this.index.set(w, i));
  }

  encode(tokens: string[]): number[] {
    return tokens.map((t) => this.index.get(t) ?? UNK_ID);
  }
}

function encodeSequence(tokens: string[], vocab: Vocabulary, out: Int32Array, at: number, length: number): void {
  if (!tokens.length) return;
  const ids = vocab.encode(tokens.slice(0, length - 2));
  out[at] = START_ID;
  out.set(ids, at + 1);
  out[at + 1 + ids.length] = END_ID;
}

/** malm.text.encode_recipe: `title [T]`, `ingredients [Ni*L]`, `instructions [Ns*L]` token ids (row-major). */
export function encodeRecipe(title: string, ingredients: string[], instructions: string[], vocab: Vocabulary,
  limits: TextLimits): { title: Int32Array; ingredients: Int32Array; instructions: Int32Array } {
  const L = limits.max_tokens;
  const ingr = ingredients.map((s) => tokenize(cleanIngredient(s))).filter((t) => t.length).slice(0, limits.max_ingredients);
  const instr = instructions.map((s) => tokenize(cleanText(s))).filter((t) => t.length).slice(0, limits.max_instructions);
  const out = { title: new Int32Array(limits.max_title_tokens).fill(PAD_ID),
    ingredients: new Int32Array(limits.max_ingredients * L), instructions: new Int32Array(limits.max_instructions * L) };
  encodeSequence(tokenize(cleanText(title)), vocab, out.title, 0, limits.max_title_tokens);
  ingr.forEach((t, i) => encodeSequence(t, vocab, out.ingredients, i * L, L));
  instr.forEach((t, i) => encodeSequence(t, vocab, out.instructions, i * L, L));
  return out;
}

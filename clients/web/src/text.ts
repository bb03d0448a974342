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

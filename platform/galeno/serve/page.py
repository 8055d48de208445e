"""The try-it page at ``GET /``: one self-contained HTML document (inline CSS and JS, no external assets).

Entities are highlighted by slicing the input with the API's offsets. Those count code points,
so the script slices ``Array.from(text)`` rather than the UTF-16 string.
"""

from __future__ import annotations

import html
import json

#: What the demo's tiny RoBERTa answers sensibly: "física" (p 0.5) from the sample corpus's 20
#: "exploración física" (configs/pretrain/tiny-cpu.yaml); "la <mask> arterial" it cannot (8 occurrences).
FILL_MASK_EXAMPLE = "A la exploración <mask> destaca abdomen blando y depresible."
#: Lab results as clinical cases report them (written for Galeno): the demo's tiny NER model
#: (PharmaCoNER sample, dev F1 0.30) tags creatinina, urea and potasio in it. On the PharmaCoNER
#: sentence this example once was, with reference ranges such as "(150-450)", it also tagged "-".
NER_EXAMPLE = "En la analítica destacaba creatinina 1,8 mg/dL, urea 90 mg/dL y potasio 5,6 mEq/L."
#: An invented note (no real person): identifiers of the kinds MEDDOCAN annotates.
DEID_EXAMPLE = ("Paciente: Jacinta Olmedo Ruiz, NHC 4521879, ingresa el 14 de marzo de 2021 en el Hospital "
                "Virgen de la Vega. Contacto: 612 345 678, jolmedo@correo.es.")

_PAGE = """<!doctype html>
<html lang="es">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Galeno: fill-mask y NER</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
 textarea { width: 100%; font: inherit; padding: .5rem; box-sizing: border-box; }
 button { margin: .5rem .5rem .5rem 0; padding: .4rem 1rem; }
 table { border-collapse: collapse; margin-top: .5rem; } td, th { padding: .2rem .6rem; border-bottom: 1px solid #ddd; text-align: left; }
 .out { white-space: pre-wrap; line-height: 1.9; border: 1px solid #ddd; padding: .6rem; min-height: 2rem; }
 mark { padding: .1rem .2rem; border-radius: .2rem; background: #ffe08a; }
 mark small { font-size: .7em; margin-left: .2rem; color: #444; }
 .err { color: #a00; } .meta { color: #666; font-size: .85rem; }
</style>
</head>
<body>
<h1>Galeno: modelos biomédicos-clínicos en español</h1>
<p class="meta">Nada de lo que escriba aquí se guarda ni se registra. API: <a href="__BASE__/docs">/docs</a>,
<a href="__BASE__/models">/models</a>.</p>
<p><label>Clave de API <input id="api-key" type="password" size="48" autocomplete="off"
 placeholder="si el servidor pide clave (auth.mode=keys)"></label>
<span class="meta">se guarda solo en esta pestaña (sessionStorage)</span></p>

<h2>Fill-mask</h2>
<textarea id="fm-text" rows="3">__FILL_MASK__</textarea>
<label>top_k <input id="fm-k" type="number" value="5" min="1" max="50"></label>
<button id="fm-go">Completar</button>
<div id="fm-out"></div>

<h2>Entidades (NER)</h2>
<textarea id="ner-text" rows="5">__NER__</textarea>
<label>agregación <select id="ner-agg"><option>simple</option><option>first</option><option>average</option><option>max</option></select></label>
<button id="ner-go">Reconocer</button>
<div id="ner-out" class="out"></div>
<p id="ner-model" class="meta"></p>

<h2>Desidentificar</h2>
<textarea id="deid-text" rows="4">__DEID__</textarea>
<button id="deid-go">Desidentificar</button>
<div id="deid-out" class="out"></div>
<p id="deid-model" class="meta"></p>

<script>
const BASE = __BASE_JSON__;
function esc(s) { return s.replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c])); }
const KEY = document.getElementById("api-key");
KEY.value = sessionStorage.getItem("galeno-api-key") || "";
KEY.onchange = () => sessionStorage.setItem("galeno-api-key", KEY.value.trim());
async function post(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (KEY.value.trim()) headers["Authorization"] = "Bearer " + KEY.value.trim();
  const r = await fetch(BASE + path, {method: "POST", headers: headers, body: JSON.stringify(body)});
  if (r.status === 401) KEY.focus();
  const data = await r.json().catch(() => ({error: "http_" + r.status, message: r.statusText}));
  if (!r.ok) throw new Error((data.error || r.status) + ": " + (data.message || ""));
  return data;
}
function model(m) { return m ? "modelo: " + esc(m.name ? m.name + " v" + m.version : m.uri) : ""; }
document.getElementById("fm-go").onclick = async () => {
  const out = document.getElementById("fm-out");
  out.textContent = "…";
  try {
    const d = await post("/fill-mask", {text: document.getElementById("fm-text").value,
                                        top_k: parseInt(document.getElementById("fm-k").value, 10)});
    out.innerHTML = "<table><tr><th>token</th><th>score</th><th>secuencia</th></tr>" +
      d.candidates.map(c => "<tr><td><b>" + esc(c.token) + "</b></td><td>" + c.score.toFixed(4) +
                            "</td><td>" + esc(c.sequence) + "</td></tr>").join("") +
      "</table><p class='meta'>" + model(d.model) + "</p>";
  } catch (e) { out.innerHTML = "<p class='err'>" + esc(e.message) + "</p>"; }
};
document.getElementById("ner-go").onclick = async () => {
  const out = document.getElementById("ner-out"), meta = document.getElementById("ner-model");
  const text = document.getElementById("ner-text").value;
  out.textContent = "…"; meta.textContent = "";
  try {
    const d = await post("/ner", {text: text, aggregation_strategy: document.getElementById("ner-agg").value});
    const cps = Array.from(text);  // offsets count code points
    let html = "", at = 0;
    for (const e of d.entities) {
      html += esc(cps.slice(at, e.start).join("")) + "<mark title='" + esc(e.label) + " " + e.score.toFixed(3) + "'>" +
              esc(cps.slice(e.start, e.end).join("")) + "<small>" + esc(e.label) + "</small></mark>";
      at = e.end;
    }
    out.innerHTML = html + esc(cps.slice(at).join(""));
    meta.innerHTML = d.entities.length + " entidades · " + model(d.model);
  } catch (e) { out.innerHTML = "<span class='err'>" + esc(e.message) + "</span>"; }
};
document.getElementById("deid-go").onclick = async () => {
  const out = document.getElementById("deid-out"), meta = document.getElementById("deid-model");
  out.textContent = "…"; meta.textContent = "";
  try {
    const d = await post("/deidentify", {text: document.getElementById("deid-text").value});
    out.textContent = d.result.text;
    meta.innerHTML = d.result.spans.length + " identificadores sustituidos · " + model(d.model);
  } catch (e) { out.innerHTML = "<span class='err'>" + esc(e.message) + "</span>"; }
};
</script>
</body>
</html>
"""


def render_page(base: str = "") -> str:
    """The page, its links and requests under ``base`` (the application's route prefix)."""
    base = base.rstrip("/")
    return (_PAGE.replace("__BASE_JSON__", json.dumps(base)).replace("__BASE__", html.escape(base, quote=True))
            .replace("__FILL_MASK__", html.escape(FILL_MASK_EXAMPLE)).replace("__NER__", html.escape(NER_EXAMPLE))
            .replace("__DEID__", html.escape(DEID_EXAMPLE)))

"""manifest.json and report.md: what the corpus job kept, dropped, and why.

The report's first table mirrors the corpus table of the bsc-bio-ehr-es model card
(name, tokens, description); tokens here are whitespace-separated words of the kept text,
the unit the card uses before subword tokenisation.
"""

from __future__ import annotations

import json
import os
from typing import Any

from galeno import paths
from galeno.corpus.config import CorpusConfig


def totals(per_source: dict[str, dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for counts in per_source.values():
        for k, v in counts.items():
            if isinstance(v, dict):
                bucket = total.setdefault(k, {})
                for r, n in v.items():
                    bucket[r] = bucket.get(r, 0) + n
            else:
                total[k] = total.get(k, 0) + v
    for k in total:
        if isinstance(total[k], dict):
            total[k] = dict(sorted(total[k].items()))
    return total


def render_report(manifest: dict[str, Any], cfg: CorpusConfig) -> str:
    per_source = manifest["sources"]
    desc = {s.name: s.description or f"{s.format} from {s.path}" for s in cfg.sources}
    lines = [
        "# Corpus report", "",
        f"Config hash `{manifest['config_hash']}`, galeno {manifest['galeno_version']}, "
        f"{manifest['elapsed_seconds']} s. Tokens are whitespace-separated words of the kept text.",
        "", "| Name | Tokens | Description |", "|---|---:|---|",
    ]
    for name in [s.name for s in cfg.sources]:
        c = per_source.get(name, {})
        lines.append(f"| {name} | {c.get('words_out', 0):,} | {desc[name]} |")
    lines.append(f"| **Total** | {manifest['total'].get('words_out', 0):,} | |")
    lines += ["", "## In and out", "",
              "| Source | Docs in | Docs out | Sentences in | Sentences out | Words in | Words out | Undecodable bytes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in list(per_source.items()) + [("**Total**", manifest["total"])]:
        lines.append(f"| {name} | {c.get('documents_in', 0):,} | {c.get('documents_out', 0):,} | "
                     f"{c.get('sentences_in', 0):,} | {c.get('sentences_out', 0):,} | "
                     f"{c.get('words_in', 0):,} | {c.get('words_out', 0):,} | {c.get('bad_bytes', 0):,} |")
    for title, key in (("Documents dropped, by reason", "document_drops"),
                       ("Sentences dropped, by reason", "sentence_drops"),
                       ("Identifiers replaced by [LABEL] (de-identification), by type", "deid_replacements")):
        reasons = sorted({r for c in per_source.values() for r in c.get(key, {})})
        if not reasons:
            continue
        lines += ["", f"## {title}", "", "| Reason | " + " | ".join(per_source) + " | Total |",
                  "|---|" + "---:|" * (len(per_source) + 1)]
        for r in reasons:
            row = [f"{per_source[s].get(key, {}).get(r, 0):,}" for s in per_source]
            lines.append(f"| {r} | " + " | ".join(row) + f" | {manifest['total'][key].get(r, 0):,} |")
    if cfg.deid.enabled:
        opted_out = [s.name for s in cfg.sources if not s.deid]
        lines += ["", f"De-identified with {cfg.deid.describe()}: {manifest['total'].get('deid_documents', 0):,} "
                  "documents, before every other step." + (f" Opted out: {', '.join(opted_out)}." if opted_out else "")]
    return "\n".join(lines) + "\n"


def write_manifest_and_report(manifest: dict[str, Any], cfg: CorpusConfig, out) -> None:
    manifest["total"] = totals(manifest["sources"])
    for path, text in ((paths.corpus_manifest(out), json.dumps(manifest, indent=2, ensure_ascii=False)),
                       (paths.corpus_report(out), render_report(manifest, cfg))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

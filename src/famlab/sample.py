"""Text generation from a trained run, with a KV cache.

``python -m famlab.sample run=<run dir> prompt="..." max_new_tokens=200 temperature=0.8 top_k=50
seed=0 [device=cpu] [use_cache=true] [sampling=greedy]`` (Hydra overrides of ``conf/sample.yaml``;
``prompt`` is taken verbatim, spaces included) prints the continuation and, when the run's attention has update gates (``attention=update_gated``), how
many key/value cache updates were skipped.
"""

from __future__ import annotations

import sys

import torch


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """Sample ``[B, 1]`` ids from last-position logits ``[B, V]``; temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stats: dict | None = None,
):
    """Extend ``idx`` ``[B, T]`` by ``max_new_tokens`` sampled ids -> ``[B, T + max_new_tokens]``.

    With ``use_cache`` each step feeds only the new token through ``model(idx, cache=...)``.
    When the sequence would pass ``model.context``, uncached decoding crops to the last
    ``context`` tokens each step (nanoGPT); cached decoding re-fills a fresh cache from the last
    ``context // 2`` tokens (so the two agree until the first crop). If ``stats`` is a dict it
    receives ``skipped_updates`` / ``total_updates`` (summed over layers) when the caches carry
    them. Call on a model in eval mode.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"prompt ids must be [batch, >=1 tokens], got shape {tuple(idx.shape)}")
    context = int(getattr(model, "context", 1 << 62))
    out, caches, spent = idx, None, []
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(out[:, -context:])
        elif caches is None or len(caches[0]) >= context:
            keep = context if caches is None else max(1, context // 2)
            if caches is not None:
                spent.append(caches)
            caches = model.new_cache()
            logits = model(out[:, -keep:], cache=caches)
        else:
            logits = model(out[:, -1:], cache=caches)
        out = torch.cat([out, _next_token(logits[:, -1], temperature, top_k, generator)], dim=1)
    if stats is not None and caches is not None:
        for key in ("skipped_updates", "total_updates"):
            values = [c.extra[key] for cs in spent + [caches] for c in cs if key in c.extra]
            if values:
                stats[key] = torch.stack(values).sum()
    return out


def main(argv: list[str] | None = None) -> str | None:
    """``famlab sample`` / ``python -m famlab.sample``: compose ``conf/sample.yaml``, print the text, return it."""
    from famlab.hydra_cli import compose_cli, quote_value

    args = [quote_value(a, "prompt") for a in (sys.argv[1:] if argv is None else argv)]
    cfg = compose_cli("sample", args, "famlab sample")
    if cfg is None:  # Hydra answered --help / --cfg
        return None
    if not cfg.run:
        raise SystemExit("famlab.sample: run=<run dir> is required (a directory written by famlab train)")
    from famlab.api import load_run
    from famlab.errors import ConfigError

    try:
        run = load_run(cfg.run)
    except ConfigError as e:
        raise SystemExit(f"famlab.sample: error: {e}") from None
    device = torch.device(cfg.device)
    model = run.model.to(device).eval()
    ids = run.tokenizer.encode(str(cfg.prompt)) or run.tokenizer.encode("\n")
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    stats: dict = {}
    out = generate(
        model,
        torch.tensor([ids], dtype=torch.long, device=device),
        int(cfg.max_new_tokens),
        float(cfg.temperature),
        None if cfg.top_k is None else int(cfg.top_k),
        generator,
        use_cache=bool(cfg.use_cache),
        stats=stats,
    )
    text = run.tokenizer.decode(out[0].tolist())
    print(text)
    if "total_updates" in stats:
        skipped, total = int(stats["skipped_updates"]), int(stats["total_updates"])
        print(
            f"[update gates] skipped {skipped} of {total} key/value cache updates ({skipped / max(total, 1):.1%})",
            file=sys.stderr,
        )
    return text


if __name__ == "__main__":
    main()

"""One SAE training step's loss and gradients, written out by hand: the same numbers as
``sae.loss(...).backward()`` (tested to float round-off) with fewer passes over the ``[batch, d_sae]`` codes.

ReLU + L1: the five GEMMs with the encoder bias, its gradient and the L1 gradient folded into them (an extra
column of ones), ReLU's mask applied in one in-place pass, which features fired from one ``amax`` and L0 from
a float mask's sum (``count_nonzero`` is 5x slower on CPU); the ``[batch, d_sae]`` tensors live in buffers
reused across steps. No autograd graph is kept.

TopK: only the encoder GEMM is dense (it picks the k features); the decoder and every backward product touch
the k chosen rows per token (gather / ``index_add_``), so a step costs about one dense GEMM plus ``top-k``
instead of five dense GEMMs. The auxiliary loss of dead features (Gao et al., 2024) takes the same sparse path.
"""

from __future__ import annotations

import torch

from .dictionary import SparseAutoencoder


def _buffer(sae: SparseAutoencoder, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A ``[batch, d_sae]`` work tensor kept between steps: fresh 75 MB allocations cost page faults on every
    step on CPU."""
    ws = sae.__dict__.setdefault("_workspace", {})
    t = ws.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = ws[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return t


def _set_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    p.grad = g.contiguous()  # the freshly computed tensor itself (no copy into the old one)


def _sparse_decode(w_dec: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``sum_j vals[:, j] * w_dec[idx[:, j]]`` without the dense ``[batch, d_sae]`` product."""
    return torch.nn.functional.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum")


def _sparse_backward(w_dec: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor, g: torch.Tensor,
                     x_c: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
    """Given ``g = dloss/d(recon)`` ``[batch, d_in]`` for ``recon = sum_j vals_j * w_dec[idx_j]`` with
    ``vals = relu(pre[idx])``, accumulate the decoder, encoder (transposed) and encoder-bias gradients into
    ``grads``. Both weight gradients have the embedding-bag shape (row ``idx[b, j]`` gets ``weight[b, j] *
    vector[b]``), so they run through ``embedding_bag``'s backward kernels: nothing ``[batch, k, d_in]`` is
    materialised. (The decoder-bias share through the encoder is added by the caller from ``grads['b_enc']``.)"""
    bag = torch.nn.functional.embedding_bag
    with torch.enable_grad():
        wd = w_dec.detach().contiguous().requires_grad_(True)
        v = vals.detach().requires_grad_(True)
        g_w, g_v = torch.autograd.grad(bag(idx, wd, per_sample_weights=v, mode="sum"), [wd, v], g)
        g_pre = (g_v * (vals > 0)).detach()  # dloss/dpre at the chosen features (ReLU's mask)
        # the encoder's gradient, transposed: row idx[b, j] += g_pre[b, j] * x_c[b]; the weight's values are unused
        p = g_pre.clone().requires_grad_(True)
        (g_enc_t,) = torch.autograd.grad(bag(idx, wd, per_sample_weights=p, mode="sum"), [wd], x_c)
    grads["W_dec"] += g_w
    grads["W_enc_t"] += g_enc_t
    grads["b_enc"].index_add_(0, idx.reshape(-1), g_pre.reshape(-1))


def step_gradients(sae: SparseAutoencoder, x: torch.Tensor, l1_scale: float = 1.0, *,
                   dead: torch.Tensor | None = None, aux_coefficient: float = 0.0, aux_k: int | None = None
                   ) -> dict[str, torch.Tensor]:
    """Set ``p.grad`` of every parameter of ``sae`` to the gradient of :meth:`SparseAutoencoder.loss` on ``x``
    and return the loss parts (``loss``, ``mse``, ``l1``, ``aux``, ``l0``: 0-d tensors; ``fired``: per feature,
    whether any token has a non-zero code; ``x_hat`` in the raw input space)."""
    cfg = sae.cfg
    b = x.shape[0]
    s = sae.input_scale
    with torch.no_grad():
        w_enc, w_dec = sae.W_enc, sae.W_dec
        x_n = x * s
        x_c = x_n - sae.b_dec
        aux = torch.zeros((), device=x.device)
        if cfg.architecture == "relu":
            # biases ride inside the GEMMs as an extra input column of ones (no [batch, d_sae] bias pass)
            ones = torch.ones(b, 1, device=x.device, dtype=x.dtype)
            x_aug = torch.cat([x_c, ones], 1)  # [b, d+1]
            f = torch.mm(x_aug, torch.cat([w_enc, sae.b_enc[None]], 0),
                         out=_buffer(sae, "codes", (b, cfg.d_sae), x)).relu_()  # [b, m]
            x_hat_n = torch.addmm(sae.b_dec, f, w_dec)
            err = x_n - x_hat_n
            mse = err.pow(2).sum(-1).mean()
            l1 = f.sum() / b  # codes are >= 0
            coef = l1_scale * cfg.l1_coefficient
            total = mse + coef * l1
            g = err.mul(-2.0 / b)
            g_wdec = f.T @ g
            # dloss/dcodes = g @ W_dec^T + the L1 term, in one GEMM; then ReLU's mask in one fused pass
            l1_col = torch.full((cfg.d_sae, 1), coef / b, device=x.device, dtype=x.dtype)
            g_pre = torch.mm(torch.cat([g, ones], 1), torch.cat([w_dec, l1_col], 1).T,
                             out=_buffer(sae, "code_grads", (b, cfg.d_sae), x))
            torch.ops.aten.threshold_backward.grad_input(g_pre, f, 0, grad_input=g_pre)  # in place
            g_enc = x_aug.T @ g_pre  # [d+1, m]: the encoder's gradient, then the encoder bias's
            g_wenc, g_benc = g_enc[:-1], g_enc[-1]
            fired = f.amax(0) > 0
            l0 = torch.gt(f, 0, out=_buffer(sae, "on", (b, cfg.d_sae), x)).sum() / b  # float: a fast sum
        else:  # topk
            pre = torch.addmm(sae.b_enc, x_c, w_enc, out=_buffer(sae, "pre", (b, cfg.d_sae), x))  # [b, m]
            vals, idx = pre.topk(cfg.k, dim=-1)  # type: ignore[arg-type]
            vals = vals.relu_()
            x_hat_n = _sparse_decode(w_dec, idx, vals) + sae.b_dec
            err = x_n - x_hat_n
            mse = err.pow(2).sum(-1).mean()
            l1 = vals.sum() / b
            g = err.mul(-2.0 / b)
            grads = {"W_dec": torch.zeros_like(w_dec), "W_enc_t": torch.zeros(cfg.d_sae, cfg.d_in, device=x.device,
                                                                               dtype=x.dtype),
                     "b_enc": torch.zeros_like(sae.b_enc)}
            _sparse_backward(w_dec, idx, vals, g, x_c, grads)
            total = mse
            if dead is not None and aux_coefficient > 0 and bool(dead.any()):
                dead_idx = dead.nonzero()[:, 0]
                ka = min(aux_k or max(cfg.d_in // 2, 1), len(dead_idx))
                a_vals, a_j = pre.index_select(1, dead_idx).topk(ka, dim=-1)
                a_vals = a_vals.relu_()
                a_idx = dead_idx[a_j]
                a_err = _sparse_decode(w_dec, a_idx, a_vals) - err
                aux = a_err.pow(2).sum(-1).mean()
                total = total + aux_coefficient * aux
                _sparse_backward(w_dec, a_idx, a_vals, a_err.mul(2.0 * aux_coefficient / b), x_c, grads)
            g_wdec, g_wenc, g_benc = grads["W_dec"], grads["W_enc_t"].T, grads["b_enc"]
            on = vals > 0
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, idx[on], True)
            l0 = on.sum() / b
        g_bdec = g.sum(0) - g_benc @ w_enc.T  # the decoder bias also centres the encoder's input
        if cfg.tied:
            _set_grad(sae.W_enc, g_wenc + g_wdec.T)
        else:
            _set_grad(sae.W_enc, g_wenc.contiguous())
            _set_grad(sae.W_dec_param, g_wdec)
        _set_grad(sae.b_enc, g_benc)
        _set_grad(sae.b_dec, g_bdec)
    return {"loss": total, "mse": mse, "l1": l1, "aux": aux, "fired": fired, "l0": l0,
            "x_hat": x_hat_n / s}

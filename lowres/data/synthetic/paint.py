"""Rendering: soft-mask compositing of a face's shapes, textures and nuisance on a pixel grid,
batched and device-agnostic."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from lowres.data.synthetic.params import IdentityParams, NuisanceParams, key_hash
from lowres.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_SKIN_STOPS = ((0.97, 0.82, 0.72), (0.86, 0.66, 0.52), (0.66, 0.46, 0.32), (0.36, 0.24, 0.17))
_HAIR_STOPS = ((0.05, 0.04, 0.04), (0.22, 0.14, 0.09), (0.45, 0.31, 0.18), (0.80, 0.66, 0.42))
_LUMA = (0.299, 0.587, 0.114)


def _palette(stops: tuple, t: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour ramp: t (n,) in [0, 1] -> (n, 3)."""
    table = torch.tensor(stops, dtype=torch.float32, device=t.device)
    pos = t.clamp(0, 1) * (len(stops) - 1)
    i = pos.floor().clamp(max=len(stops) - 2).long()
    f = (pos - i)[:, None]
    return table[i] * (1 - f) + table[i + 1] * f


def _ramp(d: torch.Tensor, soft: float) -> torch.Tensor:
    """Soft inside-mask from a signed distance (positive inside), edge ``soft`` wide."""
    return (d * (1.0 / soft) + 0.5).clamp_(0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, soft):
    """Soft mask of an axis-aligned ellipse; all arguments broadcast to (n, H, W)."""
    dx, dy = (x - cx) / a, (y - cy) / b
    r = (dx * dx + dy * dy).sqrt_()
    return _ramp((1 - r) * torch.minimum(a, b), soft)


def _over(img: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Composite ``colour`` (n, C) or (n, C, H, W) over img (n, C, H, W) with mask (n, H, W)."""
    if colour.dim() == 2:
        colour = colour[:, :, None, None]
    m = mask[:, None]
    return img + (colour - img) * m


def _col(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None]


# Identity detail map (skin texture x marks) on a canonical head-frame raster, computed once
# per identity and warped into each image with one bilinear grid_sample.
_MAP_HALF = (0.86, 0.72)  # half extents in head-frame units: (v - face centre, u)
_MAP_SIZE = (96, 80)  # ~0.018 units (< 1 px at 112x96) per map sample
_FACE_CY = 0.06  # face centre below the head-frame origin


def _detail_maps(ident: IdentityParams) -> torch.Tensor:
    """Multiplicative skin-detail maps (n, 1, Hm, Wm): (1 + texture) x (1 - marks)."""
    dev = ident.index.device
    hm, wm = _MAP_SIZE
    v = ((torch.arange(hm, device=dev) + 0.5) / hm * 2 - 1) * _MAP_HALF[0]
    u = ((torch.arange(wm, device=dev) + 0.5) / wm * 2 - 1) * _MAP_HALF[1]
    v, u = v[None, :, None], u[None, None, :]
    tex = ident.texture
    out = torch.ones(len(ident), hm, wm, device=dev)
    for k in range(tex.shape[1]):
        arg = u * _col(tex[:, k, 0]) + v * _col(tex[:, k, 1]) + _col(tex[:, k, 2])
        out += torch.cos(arg) * _col(tex[:, k, 3])
    fw, fh = ident.get("face_w"), ident.get("face_h")
    for k in range(ident.marks.shape[1]):
        mk = ident.marks[:, k]
        d2 = ((u - _col(mk[:, 0] * fw)) ** 2 + (v - _col(mk[:, 1] * fh)) ** 2) / _col(mk[:, 2]) ** 2
        out *= 1 - _col(mk[:, 3]) * (1 - d2).clamp_(min=0) ** 2
    return out[:, None]


def render(
    identity: IdentityParams,
    nuisance: NuisanceParams,
    size: tuple[int, int] = (112, 96),
    channels: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render faces: row i of ``identity`` under row i of ``nuisance``.

    Every pixel of image i depends only on row i (and its seeds), never on the other rows:
    a batch renders exactly like its images rendered one by one.

    Args:
        identity: IdentityParams with n rows (repeat rows with ``take`` for several images).
        nuisance: NuisanceParams with n rows.
        size: (H, W) output size in pixels; the layout scales with the width (any size >= 8).
        channels: 1 (grey: ITU-R 601 luma of the colour render) or 3 (RGB).
        device: where to render (default: the parameters' device).

    Returns:
        uint8 (n, channels, H, W).
    """
    if len(identity) != len(nuisance):
        raise ConfigError(
            f"render needs one nuisance row per identity row, got {len(identity)} and "
            f"{len(nuisance)}; repeat identities with IdentityParams.take"
        )
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ConfigError(f"render size must be at least 8x8 pixels, got {tuple(size)!r}")
    device = torch.device(device) if device is not None else identity.index.device
    identity, nuisance = identity.to(device), nuisance.to(device)
    if device.type != "cpu":
        return _render_batch(identity, nuisance, h, w, channels, device, workers=1)
    threads = torch.get_num_threads()
    # Intra-op OpenMP on these small per-chunk tensors costs more than it saves (and stalls
    # for milliseconds per op on a busy machine): run chunks single-threaded, several at once.
    torch.set_num_threads(1)
    try:
        return _render_batch(identity, nuisance, h, w, channels, device, workers=threads)
    finally:
        torch.set_num_threads(threads)


def _render_batch(
    identity: IdentityParams,
    nuisance: NuisanceParams,
    h: int,
    w: int,
    channels: int,
    device: torch.device,
    workers: int,
) -> torch.Tensor:
    n = len(identity)
    out = torch.empty(n, channels, h, w, dtype=torch.uint8, device=device)
    # Small chunks keep every temporary in cache and each op under torch's intra-op grain
    # size (no thread wake-ups): many times faster on CPU than one big batch.
    step = n if device.type != "cpu" else max(1, 32768 // (h * w))
    uniq, inverse = torch.unique(identity.index, return_inverse=True)
    first = torch.full((len(uniq),), n, dtype=torch.int64, device=device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=device), "amin")
    maps = _detail_maps(identity.take(first))
    per_image = _per_image(identity, nuisance, channels)
    noise_seeds = key_hash(nuisance.seed, "noise", nuisance.key).tolist()
    noise_std = nuisance.get("noise_std").tolist()
    gy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - h / w
    gx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    grid = (gx[None, :], gy[:, None])

    def work(i: int) -> None:
        j = min(n, i + step)
        chunk = {k: t[i:j] for k, t in per_image.items()}
        img = _render_chunk(chunk, maps[inverse[i:j]], grid, soft=1.2 * 2.0 / w)
        # A CPU generator whatever the render device: CUDA's Philox stream differs from the
        # CPU's Mersenne Twister, and a face must not change with the device that drew it.
        gen = torch.Generator()
        for k in range(i, j):
            # Sensor noise from one generator per image key: independent of the batch.
            gen.manual_seed(noise_seeds[k])
            noise = torch.randn(channels, h, w, generator=gen).to(device)
            img[k - i].add_(noise, alpha=noise_std[k])
        out[i:j] = img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    starts = range(0, n, step)
    workers = min(workers, len(starts))
    if workers > 1:
        # Chunks are independent; torch ops release the GIL, so threads use every core.
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, starts))
    else:
        for i in starts:
            work(i)
    return out


def _colour_tones(ident: IdentityParams, nui: NuisanceParams, channels: int) -> dict:
    """Each face part's colour per image (skin, hair, lips, iris, background, clothes, glasses,
    occluder...), as ``c_<part>`` (n, C, 1, 1) tensors: RGB, or luma for grey."""
    dev = ident.index.device
    p, q = ident.get, nui.get
    c = {}
    skin = _palette(_SKIN_STOPS, p("skin"))
    hair_t = p("hair")
    hair = _palette(_HAIR_STOPS, hair_t)
    red = ((p("hair_red") - 0.66) * 3).clamp(0, 1)[:, None] * (hair_t > 0.25).float()[:, None]
    hair = hair + red * (torch.tensor([0.55, 0.22, 0.10], device=dev) - hair) * 0.8
    lip = skin * torch.tensor([0.88, 0.62, 0.60], device=dev)
    lip = lip * (1.0 - 0.25 * p("lip_tone"))[:, None] + torch.tensor([0.06, 0.0, 0.0], device=dev)
    iris = _palette(((0.10, 0.07, 0.05), (0.35, 0.22, 0.10), (0.35, 0.45, 0.55)), p("iris"))
    # Background and clothes: a brightness plus a weaker colour cast, both from the knob range.
    bg = torch.stack([q("bg_r"), q("bg_g"), q("bg_b")], 1)
    bg = 0.35 * bg + 0.65 * bg[:, :1] * 1.3 - 0.05
    cloth = torch.stack([q("cloth_r"), q("cloth_g"), q("cloth_b")], 1)
    cloth = 0.5 * cloth + 0.5 * cloth[:, 2:] * 1.4 - 0.2
    frame = (0.05 + 0.5 * q("glasses_tone"))[:, None] * torch.tensor([1.0, 0.9, 0.8], device=dev)
    occ = _palette((*_SKIN_STOPS, (0.2, 0.3, 0.6), (0.9, 0.9, 0.85)), q("occ_tone")) * 0.9
    grey = torch.full_like(skin, 1.0)
    colours = {
        "bg": bg,
        "cloth": cloth,
        "neck": skin * 0.75,
        "ear": skin * 0.85,
        "hair": hair,
        "skin": skin,
        "beard": hair * 0.8 + skin * 0.2,
        "lid": skin * 0.5,
        "sclera": grey * 0.9,
        "iris": iris,
        "pupil": grey * 0.05,
        "brow": hair * 0.7,
        "nostril": skin * 0.35,
        "lip": lip,
        "gap": skin * 0.25,
        "frame": frame,
        "occ": occ,
    }
    luma = torch.tensor(_LUMA, device=dev)
    for name, rgb in colours.items():
        tone = (rgb * luma).sum(1, keepdim=True) if channels == 1 else rgb
        c["c_" + name] = tone[:, :, None, None]
    return c


def _per_image(ident: IdentityParams, nui: NuisanceParams, channels: int) -> dict:
    """Every per-image scalar and colour the renderer needs, as (n, 1, 1) / (n, C) tensors."""
    p, q = ident.get, nui.get
    c = _colour_tones(ident, nui, channels)
    col = _col

    ang = q("bg_grad_angle")
    c["bg_gx"] = col(torch.cos(ang) * q("bg_grad"))
    c["bg_gy"] = col(torch.sin(ang) * q("bg_grad"))
    c["blob_x"], c["blob_y"] = col(q("blob_x") * 2 - 1), col(q("blob_y") * 2 - 1)
    c["blob_ir2"] = col(1 / q("blob_r") ** 2)
    c["blob_tone"] = col(q("blob_tone"))
    inv_s = torch.exp(-q("log_scale"))
    c["cr"], c["sr"] = col(torch.cos(q("roll")) * inv_s), col(torch.sin(q("roll")) * inv_s)
    c["sx"], c["sy"] = col(q("shift_x")), col(q("shift_y"))
    yaw, pitch = q("yaw"), q("pitch")
    c["cyaw"], c["syaw"] = col(torch.cos(yaw)), col(torch.sin(yaw))
    c["cpitch"], c["spitch"] = col(torch.cos(pitch)), col(torch.sin(pitch))
    fw, fh = p("face_w"), p("face_h")
    c["fw"], c["fh"] = col(fw), col(fh)
    c["neck_dx"] = col(0.25 * torch.sin(yaw) * fw)
    c["neck_w"] = col(0.42 * fw)
    vol = p("hair_volume")
    hb = fh + vol + 0.05 + 0.55 * p("hair_length")
    c["cap_cy"], c["cap_a"], c["cap_b"] = (
        col(_FACE_CY - fh - vol + hb),
        col(fw + vol + 0.04),
        col(hb),
    )
    # Short hair stops above the eyes (face sides show); long hair reaches the shoulders.
    c["cap_bottom"] = col(_FACE_CY + (1.6 * p("hair_length") - 0.45) * fh)
    c["ifh"] = col(1 / fh)
    c["ear_y"], c["ear_a"] = col(_FACE_CY + p("eye_y") + 0.08), col(0.04 + 0.15 * p("eye_size"))
    c["long_hair"] = col((p("hair_length") > 0.45).float())
    c["jaw_in"] = col(1 - p("jaw"))
    c["sq"], c["isq"] = col(p("squareness")), col(1 / p("squareness"))
    c["face_soft"] = col(fw * 0.8)
    e_y = _FACE_CY + p("eye_y")
    nose_y = e_y + p("nose_len")
    c["beard"] = col(((p("beard") - 0.75) * 4).clamp(0, 1) * 0.75)
    c["beard_y"] = col(nose_y + 0.03)
    c["hairline"] = col(_FACE_CY - fh + p("hairline") * 2 * fh)
    c["part"] = col(p("hair_part"))
    c["temple"] = col(p("hairline_curve") * fh)
    c["ey"], c["ea"] = col(e_y), col(p("eye_size"))
    c["eb"] = col(p("eye_size") * p("eye_shape") * q("eye_open"))
    c["espace"], c["etilt"] = col(p("eye_spacing")), col(p("eye_tilt"))
    c["gaze"] = col(q("gaze_x") * p("eye_size") * 0.6)
    c["brow_len"] = col(p("brow_len"))
    c["brow_y"] = col(e_y - p("brow_gap") - q("brow_raise"))
    c["brow_arch"], c["brow_tilt"] = col(p("brow_arch")), col(p("brow_tilt") * 0.3)
    c["brow_thick"] = col(p("brow_thick"))
    c["nose_dx"], c["nose_dy"] = col(0.12 * torch.sin(yaw)), col(0.12 * torch.sin(pitch))
    c["nw"] = col(p("nose_w"))
    el, az = q("light_el"), q("light_az")
    lx_light = torch.cos(el) * torch.sin(az)
    # The nose casts its side shadow away from the light; without directional light, none.
    side = torch.where(lx_light >= 0, -1.0, 1.0) * (q("light") > 0).float()
    c["ridge_x"] = col(side * p("nose_w") * 0.55)
    c["ridge_dark"] = col(0.1 + 0.5 * q("light"))
    c["nose_top"], c["nose_y"] = col(e_y + 0.04), col(nose_y)
    smile = q("smile")
    c["mouth_iw"] = col(1 / (p("mouth_w") * (1 + 0.2 * smile)))
    c["mouth_y"] = col(nose_y + p("mouth_gap"))
    c["mouth_curve"] = col(p("mouth_curve") - 0.06 * smile)
    c["lip_up"], c["lip_low"] = col(p("lip_upper")), col(p("lip_lower"))
    c["gap"] = col(0.006 + 0.03 * smile * smile)
    c["glasses"] = q("glasses")
    c["ga"] = col(p("eye_size") * (1.6 + 0.4 * q("glasses_size")))
    c["light_x"], c["light_y"] = col(lx_light), col(-torch.sin(el))
    c["light_z"] = col(torch.cos(el) * torch.cos(az).abs())
    c["light"] = col(q("light"))
    c["occluder"] = q("occluder")
    c["occ_x"], c["occ_y"] = col((q("occ_x") * 2 - 1) * 0.6), col(0.05 + q("occ_y") * 0.8)
    c["occ_a"], c["occ_b"] = col(0.2 + 0.3 * q("occ_a")), col(0.15 + 0.2 * q("occ_b"))
    c["gain"] = torch.exp(q("log_gain"))[:, None, None, None]
    return c


def _render_chunk(c: dict, maps: torch.Tensor, grid: tuple, soft: float) -> torch.Tensor:
    """Float render (n, C, H, W) of one chunk, before sensor noise and clipping: background and
    body, then the head (hair, ears, face, skin detail, beard), eyes and brows, nose and mouth,
    glasses, light and occluder, each layer painted over the last."""
    gx, gy = grid
    img, f = _paint_background(c, gx, gy, soft)
    img = _paint_head(img, c, f, maps, soft)
    img = _paint_eyes(img, c, f, soft)
    img = _paint_nose_mouth(img, c, f, soft)
    img = _paint_finish(img, c, f, gx, gy, soft)
    return img * c["gain"]


def _paint_background(c: dict, gx, gy, soft: float) -> tuple[torch.Tensor, dict]:
    """Background, clothes and neck; returns the image and the head-frame geometry ``f`` (x, y
    in the head frame, u, v on the turned sphere, zz, on_head, body, neck) the layers share."""
    # Background: tone + linear gradient + one soft blob of clutter.
    bx, by = gx - c["blob_x"], gy - c["blob_y"]
    blob = torch.exp(-(bx * bx + by * by) * c["blob_ir2"])
    img = c["c_bg"] + (gx * c["bg_gx"] + gy * c["bg_gy"] + blob * c["blob_tone"])[:, None]

    # Inverse similarity warp, image -> head frame (roll, scale, shift).
    ox, oy = gx - c["sx"], gy - c["sy"]
    x = c["cr"] * ox + c["sr"] * oy
    y = c["cr"] * oy - c["sr"] * ox

    # Spherical head of radius 1: a visible surface point (x, y, z) rotated by yaw and pitch
    # lands at (u, v) in the head frame; features drawn in (u, v) shift and foreshorten.
    zz = (1.0 - x * x - y * y).clamp_(min=0).sqrt_()
    u = x * c["cyaw"] + zz * c["syaw"]
    v = y * c["cpitch"] + zz * c["spitch"]
    on_head = (zz > 0).float()

    # Clothes and neck (the neck turns a little with the head).
    body = _ramp(
        (1 - ((x * (1 / 1.05)) ** 2 + ((y - 1.75) * (1 / 0.75)) ** 2).sqrt_()) * 0.75, soft
    )
    img = _over(img, c["c_cloth"], body)
    neck = _ramp(c["neck_w"] - (x - c["neck_dx"]).abs_(), soft) * _ramp(y - 0.3, soft)
    img = _over(img, c["c_neck"], neck)

    return img, {
        "x": x,
        "y": y,
        "u": u,
        "v": v,
        "zz": zz,
        "on_head": on_head,
        "body": body,
        "neck": neck,
    }


def _paint_head(img, c: dict, f: dict, maps: torch.Tensor, soft: float) -> torch.Tensor:
    """Back hair, ears, the face with its skin detail map, beard and front hair; adds cap,
    face and au (|u|) to ``f``."""
    x, y, u, v, on_head = f["x"], f["y"], f["u"], f["v"], f["on_head"]
    cy = _FACE_CY
    # Back hair: a rounded cap around the head, down the sides as far as hair_length says.
    cap = _ellipse(x, y, 0.0, c["cap_cy"], c["cap_a"], c["cap_b"], soft)
    cap = cap * _ramp(c["cap_bottom"] - y, soft)
    img = _over(img, c["c_hair"], cap)

    # Ears on the turning surface (|u| mirrors both sides); long hair covers them.
    ear = _ellipse(
        u.abs(), v, c["fw"] + c["ear_a"] * 0.3, c["ear_y"], c["ear_a"], c["ear_a"] * 2.2, soft
    )
    img = _over(img, c["c_ear"], ear * on_head * (1 - cap * c["long_hair"]))

    # Face: superellipse whose half-width narrows from the cheekbones to the jaw.
    fy = (v - cy) * c["ifh"]
    taper = ((fy - 0.15) * (1 / 0.85)).clamp_(0, 1)
    half_w = c["fw"] * (1 - taper**1.5 * c["jaw_in"])
    afy = fy.abs()
    rr = ((u.abs() / half_w) ** c["sq"] + afy * afy).clamp_(min=1e-6) ** c["isq"]
    face = _ramp((1 - rr) * c["face_soft"], soft) * on_head

    # Skin with the identity's detail map (texture and marks), warped by (u, v).
    grid = torch.stack([u * (1 / _MAP_HALF[1]), (v - cy) * (1 / _MAP_HALF[0])], -1)
    detail = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    img = img + (c["c_skin"] * detail - img) * face[:, None]

    # Beard (a quarter of identities), stubble tone between hair and skin.
    if bool((c["beard"] > 0).any()):
        beard = face * _ramp(v - c["beard_y"], 0.04) * c["beard"]
        img = _over(img, c["c_beard"], beard)

    # Front hair: inside the cap or face, above a hairline that dips at the temples.
    au = u.abs()
    temple = (au / c["fw"]).clamp_(max=1.2) ** 4 * c["temple"]
    fringe = _ramp(c["hairline"] + c["part"] * u + temple - v, 0.03) * cap.maximum(face)
    img = _over(img, c["c_hair"], fringe * on_head)

    f.update(cap=cap, face=face, au=au)
    return img


def _paint_eyes(img, c: dict, f: dict, soft: float) -> torch.Tensor:
    """Eyelids, eyes (sclera, iris, pupil, gaze) and brows."""
    u, v, face, au = f["u"], f["v"], f["face"], f["au"]
    # Eyes and brows, both sides at once in mirrored coordinates (|u|): the model is symmetric
    # except for gaze, which follows the image direction.
    ea, eb = c["ea"], c["eb"]
    lx = au - c["espace"]
    ly = (v - c["ey"]) + lx * c["etilt"]
    lid = _ellipse(lx, ly + 0.004, 0.0, 0.0, ea * 1.08, eb * 1.15 + 0.012, soft)
    img = _over(img, c["c_lid"], lid * face)
    eye = _ellipse(lx, ly, 0.0, 0.0, ea, eb + 1e-3, soft) * face
    img = _over(img, c["c_sclera"], eye)
    gz = lx - torch.sign(u) * c["gaze"]
    ir = (gz * gz + ly * ly).sqrt_()
    img = _over(img, c["c_iris"], _ramp(ea * 0.5 - ir, soft) * eye)
    img = _over(img, c["c_pupil"], _ramp(ea * 0.22 - ir, soft) * eye)
    bx = au - c["espace"] * 1.05
    t = bx / c["brow_len"]
    by = c["brow_y"] - c["brow_arch"] * (1 - t * t) + c["brow_tilt"] * bx
    thick = c["brow_thick"] * (1 - 0.225 * (t + 1))
    brow = _ramp(thick - (v - by).abs_(), soft) * _ramp(1 - t.abs(), 0.15) * face
    img = _over(img, c["c_brow"], brow)

    return img


def _paint_nose_mouth(img, c: dict, f: dict, soft: float) -> torch.Tensor:
    """Nose (ridge shadow, tip, nostrils) and mouth (lips, gap)."""
    u, v, face = f["u"], f["v"], f["face"]
    # Nose: extra parallax (it sticks out), a side shadow away from the light, tip, nostrils.
    nu, nv, nw = u + c["nose_dx"], v + c["nose_dy"], c["nw"]
    rx = (nu - c["ridge_x"]) / (nw * 0.45)
    ridge = (1 - rx * rx).clamp_(min=0)
    ridge = ridge * _ramp(nv - c["nose_top"], 0.05) * _ramp(c["nose_y"] - nv, 0.03)
    tip = _ellipse(nu, nv, 0.0, c["nose_y"] - 0.005, nw * 1.1, nw * 0.45, 0.03)
    img = img * (1 - (c["ridge_dark"] * ridge + 0.12 * tip) * face)[:, None]
    nost = _ellipse(nu.abs(), nv, nw * 0.55, c["nose_y"], nw * 0.38, nw * 0.2, soft)
    img = _over(img, c["c_nostril"], nost * face)

    # Mouth: a lip band around a curved mouth line; a smile lifts the corners, parts the lips.
    mu = u * c["mouth_iw"]
    mu2 = mu * mu
    env = (1 - mu2).clamp_(min=0)
    dy = v - (c["mouth_y"] + c["mouth_curve"] * mu2)
    inside = _ramp(1 - mu.abs(), 0.1) * face
    band = torch.minimum(dy + c["lip_up"] * env, c["lip_low"] * env.sqrt() - dy)
    img = _over(img, c["c_lip"], _ramp(band, soft) * inside)
    img = _over(img, c["c_gap"], _ramp(c["gap"] * env - dy.abs(), soft) * inside)

    return img


def _paint_finish(img, c: dict, f: dict, gx, gy, soft: float) -> torch.Tensor:
    """Glasses, Lambert light over head, hair, neck and clothes, and the occluder."""
    x, y, v, zz, on_head, au = f["x"], f["y"], f["v"], f["zz"], f["on_head"], f["au"]
    cap, face, neck, body = f["cap"], f["face"], f["neck"], f["body"]
    # Glasses (only the images that wear them): two rings around the eyes and a bridge.
    wear = torch.nonzero(c["glasses"] > 0.5).flatten()
    if len(wear):
        gu, gv, ge, ga = au[wear], v[wear], c["ey"][wear], c["ga"][wear]
        gb, gsp = ga * 0.75, c["espace"][wear]
        r = (((gu - gsp) / ga) ** 2 + ((gv - ge) / gb) ** 2).sqrt_()
        rim = _ramp(0.014 - ((r - 1) * gb).abs_(), soft)
        bridge = _ramp(0.014 - (gv - ge + 0.02).abs_(), soft) * _ramp(gsp - ga - gu + 0.01, soft)
        img[wear] = _over(img[wear], c["c_frame"][wear], rim.maximum(bridge) * on_head[wear])

    # Light: Lambert on the sphere normal, over head, hair, neck and clothes.
    fg = cap.maximum(face).maximum(neck).maximum(body)
    ndotl = (x * c["light_x"] + y * c["light_y"] + zz * c["light_z"]).clamp_(min=0)
    img = img * (1 + c["light"] * (1.25 * ndotl - 1) * fg)[:, None]

    # Occluder (only the images that have one): a soft blob of some tone over the face.
    hide = torch.nonzero(c["occluder"] > 0.5).flatten()
    if len(hide):
        occ_m = _ellipse(
            gx, gy, c["occ_x"][hide], c["occ_y"][hide], c["occ_a"][hide], c["occ_b"][hide], soft
        )
        img[hide] = _over(img[hide], c["c_occ"][hide], occ_m)

    return img

"""A small headless rasteriser (moderngl over EGL; Mesa's llvmpipe where there is no GPU).

It draws a triangle mesh with per-vertex colours under soft lighting, and can also render which
triangle (and where inside it) covers each pixel, so that 2-D detections can be lifted back onto
the mesh. The mesh engine builds on it; the landmark correspondence script uses the id pass.

Frames: vertices are given in the contract's frame (X = the person's left, Y up, +Z forward, metres);
``Camera`` holds a world-to-camera matrix in OpenGL convention (camera looks down its -Z, X right,
Y up), so a camera on +Z looking at the origin sees the person's face, their left on image right.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def _in_own_context(method):
    """Make this rasteriser's GL context current for the call: each rasteriser owns a context, and
    creating a second one in the process makes it current, so the first must switch back."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._ctx:
            return method(self, *args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- camera maths

def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 1.0, 0.0])) -> np.ndarray:
    """World-to-camera 4x4 for a camera at ``eye`` looking at ``target`` (OpenGL convention)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    """OpenGL projection 4x4 (clip space, depth in [-1, 1])."""
    f = 1.0 / np.tan(np.radians(fov_y_deg) / 2.0)
    proj = np.zeros((4, 4))
    proj[0, 0] = f / aspect
    proj[1, 1] = f
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2.0 * far * near / (near - far)
    proj[3, 2] = -1.0
    return proj


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``view`` is world-to-camera (4x4), ``fov_y_deg`` the vertical field of view."""

    view: np.ndarray
    fov_y_deg: float = 12.0
    near: float = 0.05
    far: float = 20.0

    def projection(self, aspect: float) -> np.ndarray:
        return perspective(self.fov_y_deg, aspect, self.near, self.far)

    def project(self, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """World points ``(N, 3)`` to pixel coordinates ``(N, 2)`` (x right, y down) of an image ``(w, h)``."""
        w, h = size
        homo = np.concatenate([points, np.ones((len(points), 1))], axis=1)
        clip = homo @ (self.projection(w / h) @ self.view).T
        ndc = clip[:, :2] / clip[:, 3:4]
        return np.stack([(ndc[:, 0] + 1) * 0.5 * w, (1 - ndc[:, 1]) * 0.5 * h], axis=1)


@dataclass(frozen=True)
class Lighting:
    """Soft two-light setup: a key light from the upper front plus a fill, and ambient light."""

    key_direction: tuple[float, float, float] = (0.35, 0.55, 1.0)  # towards the light, world frame
    key: float = 0.75
    fill_direction: tuple[float, float, float] = (-0.6, 0.1, 0.8)
    fill: float = 0.25
    ambient: float = 0.32
    wrap: float = 0.35  # wrap lighting softens the terminator, like skin scattering
    specular: float = 0.08
    shininess: float = 24.0


@dataclass(frozen=True)
class EyeStyle:
    """Iris colour and sizes, as angles (radians) from the eyeball's forward axis."""

    iris_color: tuple[float, float, float] = (0.28, 0.18, 0.10)
    iris_angle: float = 0.40
    pupil_angle: float = 0.15


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals. ``vertices: V x 3, faces: F x 3 -> V x 3`` (unit)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(v)
    for corner in range(3):
        normals += np.stack(
            [np.bincount(faces[:, corner], weights=face_n[:, k], minlength=len(v)) for k in range(3)], axis=1
        )
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- shaders

_SHADED_VS = """
#version 330
uniform mat4 mvp;
in vec3 in_position;
in vec3 in_normal;
in vec3 in_color;
in vec4 in_eye;
in vec4 in_decal1;
in vec4 in_decal2;
out vec3 v_normal;
out vec3 v_color;
out vec3 v_position;
out vec4 v_eye;
centroid out vec4 v_decal1;  // centroid: never extrapolated past the triangle (MSAA edges)
centroid out vec4 v_decal2;
void main() {
    gl_Position = mvp * vec4(in_position, 1.0);
    v_normal = in_normal;
    v_color = in_color;
    v_position = in_position;
    v_eye = in_eye;
    v_decal1 = in_decal1;
    v_decal2 = in_decal2;
}
"""

_SHADED_FS = """
#version 330
uniform vec3 key_dir;
uniform vec3 fill_dir;
uniform vec3 eye_pos;
uniform float key;
uniform float fill;
uniform float ambient;
uniform float wrap;
uniform float specular;
uniform float shininess;
uniform vec3 iris_color;
uniform float iris_angle;
uniform float pupil_angle;
in vec3 v_normal;
in vec3 v_color;
in vec3 v_position;
in vec4 v_eye;
centroid in vec4 v_decal1;
centroid in vec4 v_decal2;
out vec4 f_color;
float coverage(float field) {
    // Inside where the (linearly interpolated) field is positive, antialiased over a pixel.
    return clamp(0.5 + field / max(fwidth(field), 1e-6), 0.0, 1.0);
}
void main() {
    vec3 base = v_color;
    base = mix(base, v_decal1.rgb, coverage(v_decal1.w));
    base = mix(base, v_decal2.rgb, coverage(v_decal2.w));
    if (v_eye.w > 0.5) {
        // Eyeball: angle from the eye's forward axis picks sclera, iris (with a darker limbal
        // ring) or pupil, per fragment, so a coarse eyeball mesh still gets a round iris.
        float a = acos(clamp(normalize(v_eye.xyz).z, -1.0, 1.0));
        float in_iris = 1.0 - smoothstep(iris_angle - 0.03, iris_angle + 0.03, a);
        float in_pupil = 1.0 - smoothstep(pupil_angle - 0.02, pupil_angle + 0.02, a);
        float limbus = smoothstep(iris_angle - 0.12, iris_angle, a);
        vec3 iris = mix(iris_color, iris_color * 0.45, limbus);
        base = mix(base, iris, in_iris);
        base = mix(base, vec3(0.02), in_pupil);
    }
    vec3 n = normalize(v_normal);
    vec3 to_eye = normalize(eye_pos - v_position);
    if (dot(n, to_eye) < 0.0) n = -n;  // back faces of open meshes (mouth, eyelids)
    float k = max((dot(n, key_dir) + wrap) / (1.0 + wrap), 0.0);
    float f = max((dot(n, fill_dir) + wrap) / (1.0 + wrap), 0.0);
    vec3 h = normalize(key_dir + to_eye);
    float s = pow(max(dot(n, h), 0.0), shininess) * specular;
    vec3 c = base * (ambient + key * k + fill * f) + vec3(s);
    f_color = vec4(pow(clamp(c, 0.0, 1.0), vec3(1.0 / 1.1)), 1.0);
}
"""

_ID_VS = """
#version 330
uniform mat4 mvp;
in vec3 in_position;
in vec2 in_bary;
in float in_tri;
out vec2 v_bary;
flat out int v_tri;
void main() {
    gl_Position = mvp * vec4(in_position, 1.0);
    v_bary = in_bary;
    v_tri = int(in_tri + 0.5);
}
"""

_ID_FS = """
#version 330
in vec2 v_bary;
flat in int v_tri;
layout(location = 0) out vec4 f_bary;
layout(location = 1) out int f_tri;
void main() {
    f_bary = vec4(v_bary, 0.0, 1.0);
    f_tri = v_tri;
}
"""


def lift_pixels(points_px: np.ndarray, tri_map: np.ndarray, bary_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which surface point shows at each pixel position, from ``render_triangle_ids`` maps.

    ``points_px: N x 2`` (x right, y down) -> (triangle ``N``, -1 on background; barycentric ``N x 3``).
    """
    h, w = tri_map.shape
    x = np.clip(np.floor(points_px[:, 0]).astype(int), 0, w - 1)
    y = np.clip(np.floor(points_px[:, 1]).astype(int), 0, h - 1)
    return tri_map[y, x], bary_map[y, x]


@dataclass
class _MeshBuffers:
    faces: np.ndarray
    position: object
    normal: object
    color: object
    eye: object
    decals: object
    index: object
    vao: object


@dataclass
class _IdBuffers:
    faces: np.ndarray
    position: object
    vao: object


@dataclass
class MeshRasterizer:
    """Draws one mesh topology at a fixed image size; vertices change every frame.

    ``set_mesh(faces, colors)`` uploads what is constant (topology, colours) once; ``render``
    uploads only positions and normals. Use as a context manager or call ``close()``.
    """

    width: int
    height: int
    samples: int = 4  # MSAA: smooth silhouettes at a small cost on llvmpipe
    _ctx: object = field(init=False, repr=False)
    _mesh: _MeshBuffers | None = field(init=False, default=None, repr=False)
    _ids: _IdBuffers | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        import moderngl

        try:
            self._ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as exc:  # moderngl raises plain Exception when EGL is missing
            raise RuntimeError(
                "cannot create a headless OpenGL context (EGL); install libegl1 libgl1-mesa-dri libegl-mesa0"
                f": {exc}"
            ) from exc
        ctx = self._ctx
        self._shaded = ctx.program(vertex_shader=_SHADED_VS, fragment_shader=_SHADED_FS)
        self._id_prog = ctx.program(vertex_shader=_ID_VS, fragment_shader=_ID_FS)
        size = (self.width, self.height)
        self._msaa_fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(size, 4, samples=self.samples)],
            depth_attachment=ctx.depth_renderbuffer(size, samples=self.samples),
        )
        self._resolve_fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, 4)])
        self._id_fbo = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer(size, 4, dtype="f4"), ctx.renderbuffer(size, 1, dtype="i4")],
            depth_attachment=ctx.depth_renderbuffer(size),
        )
        log.debug("rasteriser %dx%d on %s", self.width, self.height, ctx.info["GL_RENDERER"])

    # -- setup

    @_in_own_context
    def set_mesh(self, faces: np.ndarray, colors: np.ndarray, eye_directions: np.ndarray | None = None,
                 decals: np.ndarray | None = None) -> None:
        """Topology ``F x 3`` (int) and per-vertex linear RGB colours ``V x 3`` in [0, 1].

        ``eye_directions: V x 4`` marks eyeball vertices (w = 1) with their rest direction from the
        eyeball centre in the eye's own frame (+Z = gaze); other rows are zero. The shader draws
        iris and pupil from it (see ``EyeStyle``).

        ``decals: V x 8`` paints up to two layers over the colours with crisp, antialiased edges
        (a neckline, lips) that do not follow the triangles: per layer an RGB colour and a signed
        field, linearly interpolated across triangles; the layer covers fragments where the field
        is positive. Rows ``(r1, g1, b1, f1, r2, g2, b2, f2)``; None = no layers.
        """
        faces = np.ascontiguousarray(faces, dtype=np.int32)
        colors = np.ascontiguousarray(colors, dtype=np.float32)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be F x 3, got {faces.shape}")
        if colors.ndim != 2 or colors.shape[1] != 3:
            raise ValueError(f"colors must be V x 3, got {colors.shape}")
        n = len(colors)
        if eye_directions is None:
            eye_directions = np.zeros((n, 4), np.float32)
        eye_directions = np.ascontiguousarray(eye_directions, dtype=np.float32)
        if eye_directions.shape != (n, 4):
            raise ValueError(f"eye_directions must be {n} x 4, got {eye_directions.shape}")
        if decals is None:
            decals = np.tile(np.array([0, 0, 0, -1, 0, 0, 0, -1], np.float32), (n, 1))
        decals = np.ascontiguousarray(decals, dtype=np.float32)
        if decals.shape != (n, 8):
            raise ValueError(f"decals must be {n} x 8, got {decals.shape}")
        self._release_mesh()
        ctx = self._ctx
        position = ctx.buffer(reserve=n * 12, dynamic=True)
        normal = ctx.buffer(reserve=n * 12, dynamic=True)
        color = ctx.buffer(colors.tobytes())
        eye = ctx.buffer(eye_directions.tobytes())
        decal = ctx.buffer(decals.tobytes())
        index = ctx.buffer(faces.tobytes())
        vao = ctx.vertex_array(
            self._shaded,
            [(position, "3f", "in_position"), (normal, "3f", "in_normal"), (color, "3f", "in_color"),
             (eye, "4f", "in_eye"), (decal, "4f 4f", "in_decal1", "in_decal2")],
            index_buffer=index,
            index_element_size=4,
        )
        self._mesh = _MeshBuffers(faces, position, normal, color, eye, decal, index, vao)

    def set_colors(self, colors: np.ndarray) -> None:
        """Change per-vertex colours of the current mesh (same vertex count)."""
        if self._mesh is None:
            raise RuntimeError("set_mesh() first")
        self._mesh.color.write(np.ascontiguousarray(colors, dtype=np.float32).tobytes())

    # -- drawing

    @_in_own_context
    def render(
        self,
        vertices: np.ndarray,
        camera: Camera,
        lighting: Lighting = Lighting(),
        background: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        normals: np.ndarray | None = None,
        eyes: "EyeStyle" = None,
        cull_back_faces: bool = False,
    ) -> np.ndarray:
        """Shade the mesh. ``vertices: V x 3`` world -> RGBA uint8 ``H x W x 4`` (alpha = coverage).

        ``cull_back_faces`` skips triangles facing away (counter-clockwise = front, as anny's
        outward-facing triangles): a third less work on llvmpipe for closed meshes; open or
        two-sided parts must then carry both windings."""
        mesh = self._require_mesh(vertices)
        if normals is None:
            normals = vertex_normals(vertices, mesh.faces)
        mesh.position.write(np.ascontiguousarray(vertices, dtype=np.float32).tobytes())
        mesh.normal.write(np.ascontiguousarray(normals, dtype=np.float32).tobytes())
        prog = self._shaded
        prog["mvp"].write(self._mvp(camera))
        eye = np.linalg.inv(camera.view)[:3, 3]
        prog["eye_pos"].value = tuple(eye)
        prog["key_dir"].value = tuple(_unit(lighting.key_direction))
        prog["fill_dir"].value = tuple(_unit(lighting.fill_direction))
        for name in ("key", "fill", "ambient", "wrap", "specular", "shininess"):
            prog[name].value = float(getattr(lighting, name))
        eyes = eyes or EyeStyle()
        prog["iris_color"].value = tuple(float(c) for c in eyes.iris_color)
        prog["iris_angle"].value = float(eyes.iris_angle)
        prog["pupil_angle"].value = float(eyes.pupil_angle)
        ctx = self._ctx
        self._msaa_fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        if cull_back_faces:
            ctx.enable(ctx.CULL_FACE)
        else:
            ctx.disable(ctx.CULL_FACE)
        self._msaa_fbo.clear(*background, depth=1.0)
        mesh.vao.render()
        ctx.copy_framebuffer(self._resolve_fbo, self._msaa_fbo)
        data = self._resolve_fbo.read(components=4, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(self.height, self.width, 4)[::-1].copy()

    @_in_own_context
    def render_triangle_ids(self, vertices: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        """Which triangle covers each pixel and where.

        Returns ``tri: H x W`` int32 (-1 for background) and ``bary: H x W x 3`` float32
        barycentric weights of the triangle's three corners at the pixel centre.
        """
        mesh = self._require_mesh(vertices)
        ids = self._id_buffers(mesh.faces)
        corners = np.ascontiguousarray(vertices, dtype=np.float32)[mesh.faces].reshape(-1, 3)
        ids.position.write(corners.tobytes())
        self._id_prog["mvp"].write(self._mvp(camera))
        ctx = self._ctx
        self._id_fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        self._id_fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ids.vao.render()
        bary2 = np.frombuffer(self._id_fbo.read(components=4, attachment=0, dtype="f4"), np.float32)
        tri = np.frombuffer(self._id_fbo.read(components=1, attachment=1, dtype="i4"), np.int32)
        bary2 = bary2.reshape(self.height, self.width, 4)[::-1, :, :2]
        tri = tri.reshape(self.height, self.width)[::-1].copy()
        tri = np.where(tri > 0, tri - 1, -1)  # ids start at 1 in the buffer: 0 is background
        bary = np.concatenate([bary2, 1.0 - bary2.sum(-1, keepdims=True)], axis=-1)
        return tri.astype(np.int32), bary.astype(np.float32)

    @property
    def device(self) -> str:
        """The OpenGL renderer's name (``llvmpipe ...`` for Mesa's software rasteriser)."""
        return str(self._ctx.info["GL_RENDERER"]) if self._ctx is not None else "closed"

    # -- lifecycle

    def close(self) -> None:
        self._release_mesh()
        if getattr(self, "_ctx", None) is not None:
            self._ctx.release()
            self._ctx = None

    def __enter__(self) -> "MeshRasterizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _mvp(self, camera: Camera) -> bytes:
        mvp = camera.projection(self.width / self.height) @ camera.view
        return mvp.T.astype("f4").tobytes()  # OpenGL wants column-major

    def _require_mesh(self, vertices: np.ndarray) -> _MeshBuffers:
        if self._mesh is None:
            raise RuntimeError("set_mesh() before rendering")
        n = self._mesh.color.size // 12
        if vertices.shape != (n, 3):
            raise ValueError(f"vertices must be {n} x 3, got {vertices.shape}")
        return self._mesh

    def _id_buffers(self, faces: np.ndarray) -> _IdBuffers:
        if self._ids is not None and self._ids.faces is faces:
            return self._ids
        ctx = self._ctx
        nf = len(faces)
        bary = np.tile(np.array([[1, 0], [0, 1], [0, 0]], np.float32), (nf, 1))
        tri = np.repeat(np.arange(1, nf + 1, dtype=np.float32), 3)  # 0 is reserved for background
        position = ctx.buffer(reserve=nf * 3 * 12, dynamic=True)
        vao = ctx.vertex_array(
            self._id_prog,
            [(position, "3f", "in_position"), (ctx.buffer(bary.tobytes()), "2f", "in_bary"),
             (ctx.buffer(tri.tobytes()), "1f", "in_tri")],
        )
        self._ids = _IdBuffers(faces, position, vao)
        return self._ids

    def _release_mesh(self) -> None:
        if self._mesh is not None:
            m = self._mesh
            for obj in (m.vao, m.position, m.normal, m.color, m.eye, m.decals, m.index):
                obj.release()
            self._mesh = None
        if self._ids is not None:
            self._ids.vao.release()
            self._ids.position.release()
            self._ids = None


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)

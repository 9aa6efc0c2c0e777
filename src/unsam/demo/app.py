"""The demo's page: :func:`build_demo` lays out the gradio components and wires them to the backend
(:mod:`unsam.demo.backend`); :func:`launch_demo` serves it. gradio is imported only here, inside
:func:`build_demo`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsam.demo.backend import (
    CLICKS_PER_IMAGE,
    ClickSequence,
    DemoBackend,
    DemoState,
    _session,
    click_overlay,
    everything_overlay,
    example_images,
    mask_panels,
    masks_for_export,
    score_markdown,
    upload_error_message,
    write_masks_json,
)

if TYPE_CHECKING:
    import gradio as gr

__all__ = [
    "build_demo",
    "launch_demo",
]


def launch_demo(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = True,
    quiet: bool = False,
) -> Any:
    """Start the server on ``host:port`` (never a public share link); with ``block=False`` it runs
    in a background thread until ``demo.close()``."""
    allowed = sorted({str(p.parent) for p in example_images()})
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        allowed_paths=allowed,
        ssr_mode=False,
        quiet=quiet,
        show_error=True,
    )


def build_demo(
    backend: DemoBackend, *, top_k: int = 30, examples: Sequence[Path] | None = None
) -> gr.Blocks:
    """The gradio app: image input (upload or bundled example), click -> 6 masks (overlay, gallery
    of panels, score table), "Segment everything" (top ``top_k`` masks) and a COCO JSON download.

    Args:
        backend: models and caches (:class:`DemoBackend`).
        top_k: masks drawn by "Segment everything".
        examples: example images (default: :func:`example_images`).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    examples = example_images() if examples is None else list(examples)
    export_dir = Path(tempfile.mkdtemp(prefix="unsam-demo-"))
    clicks = ClickSequence()

    def on_image(path: str | None) -> tuple[Any, ...]:
        if path is None:
            return DemoState(), None, [], score_markdown([], None, ""), None, "", None
        state = _session(backend, None, path)
        backend.set_image(state.image, state.digest)  # type: ignore[arg-type]
        return state, None, [], score_markdown([], None, ""), None, "", None

    def on_click(
        path: str | None, state: DemoState | None, evt: gr.SelectData, request: gr.Request
    ) -> tuple[Any, ...]:
        session = getattr(request, "session_hash", None) or "default"
        ticket = clicks.start(session)
        state = _session(backend, state, path)
        x, y = (float(v) for v in evt.index)
        point = (x * state.scale, y * state.scale)
        records = backend.click(state.image, point, state.digest)  # type: ignore[arg-type]
        if backend.predictor is None:
            state.everything = backend.everything(state.image, state.digest)  # type: ignore[arg-type]
        state.clicks = [*state.clicks, *records]
        if not clicks.is_current(session, ticket):  # a newer click came in: its answer shows
            return gr.skip(), gr.skip(), gr.skip(), state
        overlay = click_overlay(state.image, records, point)  # type: ignore[arg-type]
        panels = mask_panels(state.image, records, point)  # type: ignore[arg-type]
        return overlay, panels, score_markdown(records, point, backend.click_source), state

    # the module's postponed annotations hide gr.SelectData / gr.Request from gradio's signature
    # check
    on_click.__annotations__["evt"] = gr.SelectData
    on_click.__annotations__["request"] = gr.Request

    def on_everything(path: str | None, state: DemoState | None) -> tuple[Any, ...]:
        state = _session(backend, state, path)
        records = backend.everything(state.image, state.digest)  # type: ignore[arg-type]
        state.everything = records
        shown = min(top_k, len(records))
        text = f"{len(records)} masks from {backend.everything_source}; the best {shown} are drawn."
        return everything_overlay(state.image, records, top_k=top_k), text, state  # type: ignore[arg-type]

    def on_download(path: str | None, state: DemoState | None) -> tuple[Any, ...]:
        state = _session(backend, state, path)
        if state.everything is None:
            state.everything = backend.everything(state.image, state.digest)  # type: ignore[arg-type]
        records = masks_for_export(state.everything, state.clicks)
        name = Path(state.path or "image").name
        out = export_dir / f"{Path(name).stem}_masks.json"
        write_masks_json(out, records, file_name=name, hw=state.image.shape[:2])  # type: ignore[union-attr]
        return str(out), state

    with gr.Blocks(title="UnSAM demo") as demo:
        gr.Markdown(
            "## UnSAM: segment anything without supervision\n"
            f"Upload an image or pick an example, then **click on it**. Clicks are "
            f"{backend.click_source}; *Segment everything* runs {backend.everything_source}."
        )
        state = gr.State(DemoState())
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    label="Image (click on it)",
                    sources=["upload"],
                    height=360,
                    elem_id="unsam-input",
                )
                _readable_uploads(image, gr)
                if examples:
                    gr.Examples(
                        examples=[[str(p)] for p in examples],
                        inputs=[image],
                        label="Bundled images",
                        examples_per_page=len(examples),
                        elem_id="unsam-examples",
                    )
                with gr.Row():
                    everything_btn = gr.Button(
                        "Segment everything", variant="primary", elem_id="unsam-everything"
                    )
                    download_btn = gr.Button(
                        "Download masks as COCO JSON", elem_id="unsam-download"
                    )
                coco_file = gr.File(label="COCO JSON", height=80, elem_id="unsam-coco-file")
            with gr.Column():
                overlay = gr.Image(
                    label="Masks of the click",
                    interactive=False,
                    height=360,
                    elem_id="unsam-overlay",
                )
                scores = gr.Markdown(score_markdown([], None, ""), elem_id="unsam-scores")
        gallery = gr.Gallery(
            label="The click's masks, one per granularity",
            columns=CLICKS_PER_IMAGE,
            rows=1,
            height=280,
            object_fit="contain",
            elem_id="unsam-gallery",
        )
        with gr.Row():
            everything_img = gr.Image(
                label="Segment everything",
                interactive=False,
                height=360,
                elem_id="unsam-everything-image",
            )
            everything_text = gr.Markdown("", elem_id="unsam-everything-text")

        image.change(
            on_image,
            [image],
            [state, overlay, gallery, scores, everything_img, everything_text, coco_file],
        )
        # every click is answered, in order, so the last one ends on screen: gradio's default for
        # select ("once") dropped the clicks made while one was being answered, and its
        # "always_last" resends the first click's coordinates (gradio 6.31); an answer that a
        # newer click overtook is dropped (ClickSequence)
        image.select(
            on_click,
            [image, state],
            [overlay, gallery, scores, state],
            trigger_mode="multiple",
        )
        everything_btn.click(
            on_everything, [image, state], [everything_img, everything_text, state]
        )
        download_btn.click(on_download, [image, state], [coco_file, state])
    return demo


def _readable_uploads(image: Any, gr: Any) -> None:
    """Make ``image`` (a ``gr.Image`` input) answer a file that is not an image with one sentence
    (:func:`unsam.demo.backend.upload_error_message`) instead of gradio's "Could not preprocess
    input component ..." text."""
    preprocess = image.preprocess

    def readable(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - PIL and gradio raise many types
            path = getattr(payload, "path", None)
            raise gr.Error(
                upload_error_message(path, exc), title="Not an image", print_exception=False
            ) from None

    image.preprocess = readable

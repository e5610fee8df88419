"""The browser viewer of slide-mode outputs (`hovernet view OUT_DIR`, docs/viewer.md).

`catalog` finds the finished slides of an output folder (summary + store, the slide file they
name), `index` queries a store read-only through an R*Tree (or a sidecar index for older
stores), `tiles` cuts the slide into a Deep Zoom pyramid on the fly with the project's slide
reader, and `server` is the Flask app (`create_app`) and the command's loop (`serve`); `static/`
holds the page (OpenSeadragon from npm, `viewer.js`, `viewer.css`).
"""

"""`lowbit imatrix`: collect an importance matrix over calibration text, as llama-imatrix."""
from __future__ import annotations

from pathlib import Path

from ..loading import check_output_dir, load_model, read_text
from ..machine import set_threads
from ..progress import Progress


def add_parser(sub) -> None:
    s = sub.add_parser("imatrix", help="collect an importance matrix over calibration text")
    s.add_argument("model")
    s.add_argument("-f", "--file", required=True, help="calibration text (e.g. wiki.valid.raw)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-c", "--ctx-size", type=int, default=512)
    s.add_argument("--chunks", type=int, default=None)
    s.add_argument("--process-output", action="store_true", help="include the output matrix")
    s.add_argument("--legacy", action="store_true", help="write the legacy .dat format")
    s.add_argument("-t", "--threads", type=int, default=None)
    s.set_defaults(func=run)


def run(args) -> int:
    from lowbit.quant import imatrix as imx

    from ..imatrix_collect import collect_imatrix

    set_threads(args.threads)
    out = Path(args.output)
    check_output_dir(out, "output")
    text = read_text(args.file)
    model, tokenizer = load_model(args.model)
    bar = Progress("imatrix", unit="chunks")

    def step(i, n):
        bar.total = n
        bar.update(1)

    im = collect_imatrix(model, tokenizer, text, args.file, args.ctx_size, args.chunks,
                         args.process_output, on_chunk=step)
    bar.close()
    imx.save(im, out, legacy=args.legacy)
    print(f"wrote {out}: {len(im)} matrices, {im.chunk_count} chunks of {im.chunk_size} tokens "
          f"from {args.file}")
    return 0

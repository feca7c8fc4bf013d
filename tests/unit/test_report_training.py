import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from cxrgen.stages.report_training import report_training  # noqa: E402


def _figure(path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)


def test_tiles_the_curves_and_grids_that_exist(tmp_path):
    (tmp_path / "ae").mkdir()
    (tmp_path / "ldm").mkdir()
    (tmp_path / "empty").mkdir()
    _figure(tmp_path / "ae" / "loss_curve.png")
    _figure(tmp_path / "ae" / "recon_grid.png")
    _figure(tmp_path / "ldm" / "loss.png")
    _figure(tmp_path / "ldm" / "samples.png")  # a model directory of an older trainer: not the report's grid
    _figure(tmp_path / "ldm_grid.png")  # rule sample_ldm_grid's output
    counts = report_training({"ae": tmp_path / "ae", "ldm": tmp_path / "ldm", "empty": tmp_path / "empty"},
                             tmp_path / "curves.png", tmp_path / "samples.png",
                             sample_grids={"ldm": tmp_path / "ldm_grid.png"})
    assert counts == {"curves": 2, "sample_grids": 2}
    assert Image.open(tmp_path / "curves.png").size[0] > Image.open(tmp_path / "samples.png").size[0] // 2
    none = report_training({"empty": tmp_path / "empty"}, tmp_path / "c2.png", tmp_path / "s2.png")
    assert none == {"curves": 0, "sample_grids": 0} and (tmp_path / "c2.png").is_file()

"""GUI: the Train CARE widget as a pathologist met it (issue 19): a fine-tune's fold error names what helps (its
folds have no control), a care synth folder lists slides not their masks, a failed Start leaves no old metrics,
a resumed run's curve and time cover the whole run, the status follows the job's stages, and docking the
widget never makes the window taller than it was."""

from __future__ import annotations

from test_gui_train import cancel_jobs  # noqa: F401  (cancel what a test left running)
from test_gui_train_form import TIMEOUT_MS, _docked, _finish, _form, tiny_checkpoint  # noqa: F401
from test_train_jobs import cohort  # noqa: F401

from napari_care._train_inputs import FINETUNE


def test_finetune_fold_error_names_what_helps_not_a_hidden_control(make_napari_viewer, cohort, tiny_checkpoint,  # noqa: F811
                                                                   tmp_path):
    _care, train = _docked(make_napari_viewer())
    _form(train, cohort, tiny_checkpoint, tmp_path / "run", job=FINETUNE)
    first = train.typed_rows()[0][0]
    train.set_label(first, "")  # that class now has 4 slides, fewer than a fine-tune's 5 folds
    train.metrics_label.setText("epoch 3: val_loss 0.1")  # what an earlier job left
    train.plot.add(1, 0.5)
    assert not train.start()
    text = train.status.text()
    assert "fewer than 5 folds" in text and "add slides to that class, or merge it with another" in text
    assert "fewer folds" not in text and train.folds.native.isHidden()  # no control the user cannot see
    assert train.metrics_label.text() == "" and train.plot.points == []  # nothing of the earlier job stays
    assert not (tmp_path / "run").exists()


def test_a_synth_folder_lists_slides_not_their_masks(make_napari_viewer, tmp_path):
    from care_core.synth import write_sample_slide

    for i in range(2):
        write_sample_slide(tmp_path / f"case{i}.svs", width_px=1024, height_px=1024, seed=i)
    assert sorted(p.name for p in tmp_path.glob("*_mask.tif")) == ["case0_mask.tif", "case1_mask.tif"]
    _care, train = _docked(make_napari_viewer())
    train.use_open.value = False
    train.slide_folder.value = tmp_path
    assert sorted(train.slides()) == ["case0", "case1"]
    assert [r[0] for r in train.typed_rows()] == ["case0", "case1"]


def test_resume_shows_the_whole_run_and_the_status_follows_the_stages(make_napari_viewer, qtbot, cohort,  # noqa: F811
                                                                      tiny_checkpoint, tmp_path):
    _care, train = _docked(make_napari_viewer())
    _form(train, cohort, tiny_checkpoint, tmp_path / "run")
    assert train.start()
    qtbot.waitUntil(lambda: train.status.text().startswith("training: fine-tune in "), timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: any((tmp_path / "run" / "checkpoints").glob("step_*.pt")) and len(train.plot.points) >= 2,
                    timeout=TIMEOUT_MS)
    train.cancel_button.click()
    qtbot.waitUntil(lambda: not train.timer.isActive(), timeout=30_000)
    before = [p for p in train.plot.points]
    train.resume_button.click()
    assert train.plot.points and train.plot.points[0][0] == before[0][0]  # the curve starts where the run started
    _finish(qtbot, train)
    steps = [s for s, _ in train.plot.points]
    assert steps == sorted(steps) and steps[0] == 1  # one curve from step 1 to the end, no step twice
    assert "before the resume)" in train.progress_label.text()


def test_docking_train_care_keeps_the_window_height(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1400, 900)
    qtbot.wait(50)
    _docked(viewer)
    qtbot.wait(200)
    assert window.height() <= 900

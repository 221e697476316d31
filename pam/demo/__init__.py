"""`pam demo`: the whole pipeline on the embedded default, as a newcomer's first command.

Modules, in pipeline order:
    album       which photos (a folder, ../shared/photos, or the sample photos shipped inside the
                scikit-image and scikit-learn wheels extended by seeded crops) and their licences
    properties  per-photo properties for the simulated panel: pixel attribute measures and
                ImageNet content of the pretrained trunk
    panel       the simulated rater panel over the album (personalize.simulate) and its users
    stages      stage timing, progress and failures that name the stage and what to do
    sessions    Active-PAM vs random sessions of the simulated users over HTTP, as a client would
    report      the HTML report with its PNG plots
The orchestration is pam/commands/demo.py. Only `album`, `sessions` and `report` are light; the
properties stage imports torch.
"""

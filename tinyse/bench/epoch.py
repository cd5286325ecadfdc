"""``--torch-epoch MODEL``: PyTorch's time for one CIFAR-10 epoch, to compare with tinyse.train's."""
import time

from tinyse.bench.machine import torch_device
from tinyse.bench.rows import LR, MOMENTUM, WEIGHT_DECAY, torch_twin_model
from tinyse.bench.timing import synchronizer
from tinyse.data import BatchLoader, load_cifar
from tinyse.progress import Progress


def torch_epoch(model_name, device, data_dir, batch, seed=0):
    """(seconds, images) for PyTorch to train ``model_name`` for one epoch of CIFAR-10 (all training images).

    The twin of ``python -m tinyse.train --model MODEL --epochs 1 --val-split 0``: the same data
    loader (tinyse's crops and flips, in the training loop's thread), batch, optimiser and lr.
    """
    import torch

    target = torch_device(device)
    data = load_cifar("cifar10", root=data_dir)
    loader = BatchLoader(data.train_images, data.train_labels, batch, data.mean, data.std, shuffle=True,
                         augment=True, seed=seed)
    model = torch_twin_model(model_name).to(target)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    progress = Progress(len(loader), f"torch {model_name}, one epoch")
    started = time.perf_counter()
    for images, labels in loader.batches(0):
        images, labels = torch.from_numpy(images.data).to(target), torch.from_numpy(labels).to(target)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.update(loss=loss.item())
    synchronizer("torch", device)()
    progress.close()
    return time.perf_counter() - started, len(data.train_labels)

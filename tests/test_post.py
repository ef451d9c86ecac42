"""dni_dist.post.Post on the CPU: a read takes what was sent a tick before (once), and before any
send it reads the device's value at once."""
import torch

from dni_dist.post import Post


def test_a_read_takes_what_was_sent_before():
    post, now = Post(), []
    assert post.take(lambda: now.append(1) or torch.tensor([3, 4])) == [3, 4] and now == [1]  # nothing sent
    value = torch.tensor([5, 6])
    post.send(value)
    value.add_(10)  # the device moves on: the post holds the value as sent
    assert post.take(lambda: now.append(1) or value) == [5, 6] and now == [1]
    assert post.take(lambda: torch.tensor([7, 8])) == [7, 8]  # consumed: the next read without a send reads now
    post.send(torch.tensor([1.0, 2.0]))  # floats arrive as integers
    assert post.take(lambda: None) == [1, 2]
